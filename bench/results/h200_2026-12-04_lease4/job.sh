#!/bin/bash
# detached (2026-12-04, fourth lease): one synchronization a step (loss read with the norm, none after the update)
# A/B against HEAD's tree: d12 ZeRO-1, d48 ZeRO-1, d12 ZeRO-3; then d48's profile with the new code
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
touch $R/prebuild.done
D12=(--ds_config ds_configs/gpt2_124M.json -e d12 -b 64 -t 1024 -d 524288)
D48=(--ds_config ds_configs/gpt2_1558M.json -e d48 -b 16 -t 1024 -d 131072)
TORCH_EXTENSIONS_DIR=/tmp/tx OUT=$R/ab bash bench/ab_trees.sh /tmp/base d12_z1 2 20 "${D12[@]}" -z 1
touch $R/d12.done
TORCH_EXTENSIONS_DIR=/tmp/tx OUT=$R/ab bash bench/ab_trees.sh /tmp/base d48_z1 2 10 "${D48[@]}" -z 1
touch $R/d48.done
TORCH_EXTENSIONS_DIR=/tmp/tx OUT=$R/ab bash bench/ab_trees.sh /tmp/base d12_z3 1 20 "${D12[@]}" -z 3
touch $R/d12z3.done
export TORCH_EXTENSIONS_DIR=/tmp/tx/shared
source bench/device_env.sh
python3 bench/profile_step.py "${D48[@]}" -z 1 -r 0 -i "$DATA/random_train_*.bin" -j "$DATA/random_val_*.bin" \
  > $R/profile_d48.txt 2>&1
touch $R/profile.done
kill $sampler
touch $R/all.done
