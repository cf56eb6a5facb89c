#!/bin/bash
# detached (2026-12-04, third lease): host facts; the one-exp loss kernel (GPU tests, microbench, A/B in the trainer
# against HEAD's tree); llm.c side by side d12; d12 profile; side by side d24 B=64
export TORCH_CUDA_ARCH_LIST=9.0 PATH=$PATH:/usr/local/cuda/bin PYTHONUNBUFFERED=1
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages
R=/tmp/res; mkdir -p $R
cd /tmp/new
(while true; do nvidia-smi --query-gpu=timestamp,power.draw,clocks.sm,temperature.gpu --format=csv,noheader >> $R/clocks.csv; sleep 10; done) &
sampler=$!
python3 bench/host_probe.py > $R/host.txt 2>&1
# builds on the CPU first, in parallel: each tree's extensions where its A/B runs look (FusedAdam, the GELU
# epilogues, the loss kernel), and llm.c (as bench/llmc_side_by_side.sh does)
prebuild() {
  (cd $1 && TORCH_EXTENSIONS_DIR=$2 python3 -c "
from deepspeed.ops.op_builder import FusedAdamBuilder; FusedAdamBuilder().load()
from ds_train import gelu_fusion, loss; gelu_fusion.extension(); loss.softmax_grad_extension(); print('built')")
}
prebuild /tmp/base /tmp/tx/base > $R/prebuild_base.log 2>&1 &
pb1=$!
prebuild /tmp/new /tmp/tx/new > $R/prebuild_new.log 2>&1 &
pb2=$!
mkdir -p $R/sbs
( PYTHON=python3 OUT=$R/sbs LLMC_DIR=.llmc; eval "$(sed -n '/^build_llmc() {/,/^}/p' bench/llmc_side_by_side.sh)"; build_llmc ) > $R/llmc_prebuild.log 2>&1 &
llmc=$!
wait $pb1 $pb2
TORCH_EXTENSIONS_DIR=/tmp/tx/new timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_loss.py -k gpu > $R/test_loss_gpu.txt 2>&1
touch $R/test.done
TORCH_EXTENSIONS_DIR=/tmp/tx/new timeout 400 python3 bench/softmax_onepass.py > $R/softmax_onepass.txt 2>&1
touch $R/onepass.done
wait $llmc
D12=(--ds_config ds_configs/gpt2_124M.json -e d12 -b 64 -t 1024 -d 524288)
TORCH_EXTENSIONS_DIR=/tmp/tx OUT=$R/ab bash bench/ab_trees.sh /tmp/base sm 2 12 "${D12[@]}" -z 1
touch $R/ab.done
export TORCH_EXTENSIONS_DIR=/tmp/tx/new
LLMC_DIR=.llmc OUT=$R/sbs bash bench/llmc_side_by_side.sh d12
touch $R/sbs.done
source bench/device_env.sh
python3 bench/profile_step.py "${D12[@]}" -z 1 -r 0 -i "$DATA/random_train_*.bin" -j "$DATA/random_val_*.bin" \
  > $R/profile_d12.txt 2>&1
touch $R/profile.done
LLMC_DIR=.llmc OUT=$R/sbs24 bash bench/llmc_side_by_side.sh d24_b64
touch $R/sbs24.done
kill $sampler
touch $R/all.done
