#!/usr/bin/env bash
# GPT-3 (125M) on FineWeb 100B: llm.c's scripts/run_gpt3_125M.sh on ds_train. Context 2048, as GPT-3.
# 125M parameters, 300B tokens: 572,204 steps of 524,288 tokens.
# => 6 * 125e6 * 300e9 ~= 2.25e20 FLOPs. llm.c: ~150 ms/step on 8x A100 80GB, about 24 hours.
# Skips the update of any step whose loss or grad norm z-score exceeds 7 (-sl 7 -sg 7); keeps the last 5
# checkpoints and every 50,000th.
#
# Data, once:
#   python -m ds_train.prepare fineweb --version 100B    # data/fineweb100B/fineweb_{val,train}_%06d.bin
#
# Run: bash scripts/run_gpt3_125M.sh [extra flags]; DRY_RUN=1, NUM_GPUS, LAUNCHER: see scripts/lib.sh.
# llm.c's script passes -ge 1 (GELU fused into the forward matmul only), a speed setting: the same arithmetic
# up to bf16 rounding. ds_train leaves -ge at its default, 2 on a GPU, which trains faster here
# (gpt3:c768 B=32 x 8 on an H200: 1024.4 and 1024.5 ms per step at -ge 1, 1006.3 and 1008.6 at -ge 2,
# 1.7% faster, the same losses; bench/results/h200_2026-12-03_sizes/). Append -ge 1 to run llm.c's setting.
source "$(dirname "$0")/lib.sh"
RUN_NAME=gpt3_125M
DS_CONFIG=ds_configs/gpt3_125M.json
STEPS=572204
FLAGS=(-i "$DATA_DIR/fineweb100B/fineweb_train_*.bin" -j "$DATA_DIR/fineweb100B/fineweb_val_*.bin"
       -v 250 -s 20000 -g 144 -h 1 -b 32 -t 2048 -d 524288 -r 0 -z 1 -c 0.1 -l 0.0006 -q 0.1 -u 700 -n 10000
       -nk 5 -nm 50000 -sl 7.0 -sg 7.0 -x "$STEPS" -e gpt3:c768)
run_until_done "$@"
