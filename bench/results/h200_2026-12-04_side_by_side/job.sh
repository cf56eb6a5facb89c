#!/bin/bash
# detached (lease of 2026-12-04): llm.c side by side at HEAD (d12, d24 B=64), then A/B of the deferred residual add
# (base = b19f65f, the commit before it) for d48 B=16 (twice) and d24 B=64 (once), then d12 checks (ZeRO-3, -r 1,
# -r 2, ZeRO-1), then d48 B=32 x 4
export TORCH_CUDA_ARCH_LIST=9.0 PATH=$PATH:/usr/local/cuda/bin PYTHONUNBUFFERED=1
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages
R=/tmp/res; mkdir -p $R
cd /tmp/new
(while true; do nvidia-smi --query-gpu=timestamp,power.draw,clocks.sm,temperature.gpu --format=csv,noheader >> $R/clocks.csv; sleep 10; done) &
export TORCH_EXTENSIONS_DIR=/tmp/tx/shared
LLMC_DIR=.llmc OUT=$R/sbs bash bench/llmc_side_by_side.sh d12 d24_b64
touch $R/sbs.done
export TORCH_EXTENSIONS_DIR=/tmp/tx
D48=(--ds_config ds_configs/gpt2_1558M.json -e d48 -b 16 -t 1024 -d 131072 -z 1)
D24=(--ds_config ds_configs/gpt2_350M.json -e d24 -b 64 -t 1024 -d 524288 -z 1)
OUT=$R/ab bash bench/ab_trees.sh /tmp/base d48 2 8 "${D48[@]}"
python3 bench/summarize.py $R/ab/d48/*.log --first 4 --last 8 > $R/ab/d48/summary.txt 2>&1
touch $R/d48.done
OUT=$R/ab bash bench/ab_trees.sh /tmp/base d24 1 10 "${D24[@]}"
python3 bench/summarize.py $R/ab/d24/*.log --first 4 --last 10 > $R/ab/d24/summary.txt 2>&1
touch $R/d24.done
export TORCH_EXTENSIONS_DIR=/tmp/tx/shared
source bench/device_env.sh; OUT=$R/checks; mkdir -p $OUT
D12=(--ds_config ds_configs/gpt2_124M.json -e d12 -b 64 -t 1024 -d 524288)
train_run z3 12 "${D12[@]}" -z 3
train_run r1 12 "${D12[@]}" -z 1 -r 1
train_run r2 12 "${D12[@]}" -z 1 -r 2
train_run z1 12 "${D12[@]}" -z 1
python3 bench/summarize.py $OUT/*.log --first 4 --last 12 > $OUT/summary.txt 2>&1
touch $R/checks.done
OUT=$R/d48_b32; mkdir -p $OUT
train_run d48_b32 10 --ds_config ds_configs/gpt2_1558M.json -e d48 -b 32 -t 1024 -d 131072 -z 1
python3 bench/summarize.py $OUT/*.log --first 4 --last 10 > $OUT/summary.txt 2>&1
kill %1
touch $R/all.done
