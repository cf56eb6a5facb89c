#!/usr/bin/env bash
# GPT-2 (774M) on FineWeb 100B: llm.c's scripts/run_gpt2_774M.sh on ds_train.
# 774M parameters, ~150B tokens: 286,102 steps of 524,288 tokens (micro-batch 32: accumulation 2 on 8 GPUs).
# => 6 * 774e6 * 150e9 ~= 7e20 FLOPs (10x the 350M). llm.c: ~1.7 s/step on 8x A100 80GB, ~5.6 days.
#
# Data, once:
#   python -m ds_train.prepare fineweb --version 100B    # data/fineweb100B/fineweb_{val,train}_%06d.bin
#
# Run: bash scripts/run_gpt2_774M.sh [extra flags]; DRY_RUN=1, NUM_GPUS, LAUNCHER: see scripts/lib.sh.
source "$(dirname "$0")/lib.sh"
RUN_NAME=gpt2_774M
DS_CONFIG=ds_configs/gpt2_774M.json
STEPS=286102
FLAGS=(-i "$DATA_DIR/fineweb100B/fineweb_train_*.bin" -j "$DATA_DIR/fineweb100B/fineweb_val_*.bin"
       -v 250 -s 300000 -g 144 -h 1 -b 32 -t 1024 -d 524288 -r 0 -z 1 -c 0.1 -l 0.00025 -q 0.0 -u 700 -n 4000
       -x "$STEPS" -e d36)
run_until_done "$@"
