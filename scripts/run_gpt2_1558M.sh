#!/usr/bin/env bash
# GPT-2 (1558M) on FineWeb-Edu 100B: llm.c's scripts/run_gpt2_1558M.sh on ds_train.
# 1558M parameters, 32B tokens: 32,000 steps of 1,048,576 tokens (micro-batch 16: accumulation 8 on 8 GPUs).
# => 6 * 1558e6 * 32e9 ~= 3e20 FLOPs. llm.c: ~2.75 s/step on 8x H100 80GB (~381K tokens/s, 47% MFU),
# about 24 hours.
#
# Data, once:
#   python -m ds_train.prepare edu_fineweb --version 100B   # data/edu_fineweb100B/edu_fineweb_{val,train}_%06d.bin
#
# Run: bash scripts/run_gpt2_1558M.sh [extra flags]; DRY_RUN=1, NUM_GPUS, LAUNCHER: see scripts/lib.sh.
# llm.c's script passes -ge 1 (GELU fused into the forward matmul only), a speed setting: the same arithmetic
# up to bf16 rounding. ds_train leaves -ge at its default, 2 on a GPU, which trains faster here
# (d48 B=16 x 8 on an H200: 2577.0 ms per step at -ge 1, 2543.8 at -ge 2, 1.3% faster, the same losses;
# bench/results/h200_2026-12-03_sizes/). Append -ge 1 to run llm.c's setting.
source "$(dirname "$0")/lib.sh"
RUN_NAME=gpt2_1558M
DS_CONFIG=ds_configs/gpt2_1558M.json
STEPS=32000
FLAGS=(-i "$DATA_DIR/edu_fineweb100B/edu_fineweb_train_*.bin" -j "$DATA_DIR/edu_fineweb100B/edu_fineweb_val_*.bin"
       -v 250 -s 300000 -g 384 -h 1 -b 16 -t 1024 -d 1048576 -r 0 -z 1 -c 0.1 -k cosine -l 0.0006 -q 0.1 -u 700
       -n 2000 -x "$STEPS" -e d48)
run_until_done "$@"
