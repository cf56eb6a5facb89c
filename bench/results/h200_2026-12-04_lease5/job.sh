#!/bin/bash
# detached (2026-12-04, fifth lease): the blocks' weight gradients into DeepSpeed's fp32 accumulators by the matmuls
# GPU tests first; then A/B against HEAD's tree (c0c1451): d48 ZeRO-1 (twice), d12 ZeRO-1 (twice), d24 (once);
# then d48's profile with the new code
export TORCH_CUDA_ARCH_LIST=9.0 PATH=$PATH:/usr/local/cuda/bin PYTHONUNBUFFERED=1
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages
R=/tmp/res; mkdir -p $R
cd /tmp/new
(while true; do nvidia-smi --query-gpu=timestamp,power.draw,clocks.sm,temperature.gpu --format=csv,noheader >> $R/clocks.csv; sleep 10; done) &
sampler=$!
python3 bench/host_probe.py > $R/host.txt 2>&1
(TORCH_EXTENSIONS_DIR=/tmp/tx/shared python3 -c "
from deepspeed.ops.op_builder import FusedAdamBuilder; FusedAdamBuilder().load()
from ds_train import gelu_fusion, loss; gelu_fusion.extension(); loss.softmax_grad_extension(); print('built')") > $R/prebuild.log 2>&1
TORCH_EXTENSIONS_DIR=/tmp/tx/shared timeout 400 python3 -m pytest -q -rs -p no:cacheprovider tests/test_weight_grad.py \
  tests/test_training.py::test_bf16_gradient_fold_in_one_kernel_equals_deepspeeds tests/test_grad_fold.py \
  tests/test_model.py::test_gelu_fusion_kernels_match_the_unfused_arithmetic_on_the_gpu > $R/pytest_gpu.txt 2>&1
touch $R/tests.done
D12=(--ds_config ds_configs/gpt2_124M.json -e d12 -b 64 -t 1024 -d 524288)
D24=(--ds_config ds_configs/gpt2_350M.json -e d24 -b 64 -t 1024 -d 524288)
D48=(--ds_config ds_configs/gpt2_1558M.json -e d48 -b 16 -t 1024 -d 131072)
TORCH_EXTENSIONS_DIR=/tmp/tx OUT=$R/ab bash bench/ab_trees.sh /tmp/base d48_z1 2 10 "${D48[@]}" -z 1
touch $R/d48.done
TORCH_EXTENSIONS_DIR=/tmp/tx OUT=$R/ab bash bench/ab_trees.sh /tmp/base d12_z1 2 20 "${D12[@]}" -z 1
touch $R/d12.done
export TORCH_EXTENSIONS_DIR=/tmp/tx/shared
source bench/device_env.sh
python3 bench/profile_step.py "${D48[@]}" -z 1 -r 0 -i "$DATA/random_train_*.bin" -j "$DATA/random_val_*.bin" \
  > $R/profile_d48.txt 2>&1
touch $R/profile.done
TORCH_EXTENSIONS_DIR=/tmp/tx OUT=$R/ab bash bench/ab_trees.sh /tmp/base d24_z1 1 12 "${D24[@]}" -z 1
touch $R/d24.done
kill $sampler
touch $R/all.done
