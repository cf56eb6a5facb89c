#!/bin/bash
# detached (second lease of 2026-12-04, after the first machine was taken back): recompute costs of the current
# code, -r 0, 1, 2 in turn, and -r 2 of b19f65f (before the deferred add) beside them, twice; then d12 ZeRO-3 and
# d48 B=16
export TORCH_CUDA_ARCH_LIST=9.0 PATH=$PATH:/usr/local/cuda/bin PYTHONUNBUFFERED=1
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages
R=/tmp/res; mkdir -p $R
cd /tmp/new
{ lscpu | grep -E "Model name|^CPU\(s\)"; nvidia-smi --query-gpu=name,power.limit,clocks.max.sm,driver_version --format=csv
  python3 -c "import timeit; print('python loop, 1e6 adds:', min(timeit.repeat('s=0\nfor i in range(1000000): s+=i', number=1, repeat=5)), 's')"
  python3 -c "import torch,timeit; x=torch.ones(8); print('torch CPU op dispatch, 1e5 x.add_(1):', min(timeit.repeat('x.add_(1)', globals=dict(x=x), number=100000, repeat=3)), 's')"
} > $R/env.txt 2>&1
(while true; do nvidia-smi --query-gpu=timestamp,power.draw,clocks.sm,temperature.gpu --format=csv,noheader >> $R/clocks.csv; sleep 10; done) &
export TORCH_EXTENSIONS_DIR=/tmp/tx/shared
source bench/device_env.sh
random_shards
OUT=$R/rec; mkdir -p $OUT
D12=(--ds_config ds_configs/gpt2_124M.json -e d12 -b 64 -t 1024 -d 524288 -z 1)
train_run warmup 3 "${D12[@]}"   # builds the extensions, fills the caches
for i in 1 2; do
  for r in 0 1 2; do train_run new_r${r}_$i 12 "${D12[@]}" -r $r; done
  (cd /tmp/base && train_run base_r2_$i 12 "${D12[@]}" -r 2)
  python3 bench/summarize.py $OUT/new_*.log $OUT/base_*.log --first 4 --last 12 > $OUT/summary.txt 2>&1
  touch $R/round$i.done
done
OUT=$R/checks; mkdir -p $OUT
train_run z3 12 "${D12[@]}" -z 3   # the later -z wins
python3 bench/summarize.py $OUT/z3.log --first 4 --last 12 > $OUT/summary.txt 2>&1
train_run d48 8 --ds_config ds_configs/gpt2_1558M.json -e d48 -b 16 -t 1024 -d 131072 -z 1
python3 bench/summarize.py $OUT/d48.log --first 4 --last 8 >> $OUT/summary.txt 2>&1
kill %1
touch $R/all.done
