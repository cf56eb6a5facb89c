#!/bin/bash
# call 2 (GPU tests): join the FA4 tar, install into /tmp/site, run the GPU-only tests of HEAD's tree
S=/tmp/site
cat /tmp/park/part_00 .fa4b/part_01 > /tmp/cu13.tar.xz
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $S /tmp/park/whl/*.whl .fa4b/whl/*.whl 2>&1 | tail -3
tar xJf /tmp/cu13.tar.xz -C $S
export PYTHONPATH=$S:$S/nvidia_cutlass_dsl/dsl_packages PATH=$S/bin:$PATH:/usr/local/cuda/bin TORCH_CUDA_ARCH_LIST=9.0 \
  TORCH_EXTENSIONS_DIR=/tmp/tx PYTHONUNBUFFERED=1
python3 bench/host_probe.py > $OUT/host.txt 2>&1
git log --oneline -1 2>/dev/null
timeout 500 python3 -m pytest -q -rs -p no:cacheprovider tests/test_grad_fold.py tests/test_inductor_choices.py \
  tests/test_loss.py::test_triton_kernel_agrees_with_eager_on_the_gpu tests/test_loss.py::test_cuda_kernel_agrees_with_triton_on_the_gpu \
  tests/test_model.py::test_gelu_fusion_kernels_match_the_unfused_arithmetic_on_the_gpu \
  tests/test_model.py::test_flash_attention_kernels_match_sdpa_on_the_gpu \
  tests/test_training.py::test_bf16_gradient_fold_in_one_kernel_equals_deepspeeds \
  tests/test_training.py::test_ds_accelerator_cpu_keeps_launched_ranks_on_the_cpu_of_a_gpu_machine 2>&1 | tee $OUT/pytest_gpu.txt | tail -40
