#!/bin/bash
# detached (second lease of 2026-12-04): host facts; llm.c side by side at HEAD (d12, d24 B=64, both trainers at
# lr 6e-4 for the same steps); d12 profiles at -r 0 and -r 1; A/B against b19f65f (before the deferred add) at
# -r 1 and -r 2 (twice) and -r 0 (once); d12 ZeRO-3; d48 B=16
export TORCH_CUDA_ARCH_LIST=9.0 PATH=$PATH:/usr/local/cuda/bin PYTHONUNBUFFERED=1
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages
R=/tmp/res; mkdir -p $R
cd /tmp/new
{ lscpu | grep -E "Model name|^CPU\(s\)|MHz"; nvidia-smi --query-gpu=name,power.limit,clocks.max.sm,driver_version --format=csv
  python3 -c "import timeit; print('python loop, 1e6 adds:', min(timeit.repeat('s=0\nfor i in range(1000000): s+=i', number=1, repeat=5)), 's')"
  python3 -c "import torch,timeit; x=torch.ones(8); print('torch CPU op dispatch, 1e5 x.add_(1):', min(timeit.repeat('x.add_(1)', globals=dict(x=x), number=100000, repeat=3)), 's')"
} > $R/env.txt 2>&1
(while true; do nvidia-smi --query-gpu=timestamp,power.draw,clocks.sm,temperature.gpu --format=csv,noheader >> $R/clocks.csv; sleep 10; done) &
export TORCH_EXTENSIONS_DIR=/tmp/tx/shared
LLMC_DIR=.llmc OUT=$R/sbs bash bench/llmc_side_by_side.sh d12 d24_b64
touch $R/sbs.done
source bench/device_env.sh
D12=(--ds_config ds_configs/gpt2_124M.json -e d12 -b 64 -t 1024 -d 524288)
mkdir -p $R/profile
for r in 0 1; do
  python3 bench/profile_step.py "${D12[@]}" -z 1 -r $r -i "$DATA/random_train_*.bin" -j "$DATA/random_val_*.bin" \
    > $R/profile/profile_d12_r$r.txt 2>&1
done
touch $R/profile.done
export TORCH_EXTENSIONS_DIR=/tmp/tx
for r in 1 2; do
  OUT=$R/ab bash bench/ab_trees.sh /tmp/base r$r 2 12 "${D12[@]}" -z 1 -r $r
  python3 bench/summarize.py $R/ab/r$r/*.log --first 4 --last 12 > $R/ab/r$r/summary.txt 2>&1
  touch $R/r$r.done
done
OUT=$R/ab bash bench/ab_trees.sh /tmp/base r0 1 12 "${D12[@]}" -z 1 -r 0
python3 bench/summarize.py $R/ab/r0/*.log --first 4 --last 12 > $R/ab/r0/summary.txt 2>&1
touch $R/r0.done
export TORCH_EXTENSIONS_DIR=/tmp/tx/shared
OUT=$R/checks; mkdir -p $OUT
train_run z3 12 "${D12[@]}" -z 3
train_run d48 8 --ds_config ds_configs/gpt2_1558M.json -e d48 -b 16 -t 1024 -d 131072 -z 1
python3 bench/summarize.py $OUT/z3.log --first 4 --last 12 > $OUT/summary.txt 2>&1
python3 bench/summarize.py $OUT/d48.log --first 4 --last 8 >> $OUT/summary.txt 2>&1
kill %1
touch $R/all.done
