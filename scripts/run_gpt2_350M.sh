#!/usr/bin/env bash
# GPT-2 (350M) on FineWeb 100B: llm.c's scripts/run_gpt2_350M.sh on ds_train.
# 350M parameters, ~31.5B tokens: 60,000 steps of 524,288 tokens.
# => 6 * 350e6 * 31.5e9 ~= 7e19 FLOPs (10x the 124M). llm.c: ~820 ms/step on 8x A100 80GB, ~14 hours.
# Should reach: val loss ~2.93 (llm.c).
#
# Data, once:
#   python -m ds_train.prepare fineweb --version 100B    # data/fineweb100B/fineweb_{val,train}_%06d.bin
#
# Run: bash scripts/run_gpt2_350M.sh [extra flags]; DRY_RUN=1, NUM_GPUS, LAUNCHER: see scripts/lib.sh.
source "$(dirname "$0")/lib.sh"
RUN_NAME=gpt2_350M
DS_CONFIG=ds_configs/gpt2_350M.json
STEPS=60000
FLAGS=(-i "$DATA_DIR/fineweb100B/fineweb_train_*.bin" -j "$DATA_DIR/fineweb100B/fineweb_val_*.bin"
       -v 250 -s 100000 -g 144 -h 1 -b 64 -t 1024 -d 524288 -r 0 -z 1 -c 0.1 -l 0.0003 -q 0.0 -u 700 -n 2000
       -x "$STEPS" -e d24)
run_until_done "$@"
