#!/usr/bin/env bash
# GPT-2 (124M) on FineWeb 10B: llm.c's scripts/run_gpt2_124M.sh on ds_train.
# 124M parameters, 10B tokens: 18,865 steps of 524,288 tokens (one epoch of FineWeb 10B's train split).
# => 6 * 124e6 * 10e9 ~= 7e18 FLOPs. llm.c: ~300 ms/step on 8x A100 80GB, ~1.6 hours.
# Should reach: val loss ~3.28 (llm.c; an 8x H100 rerun logged 3.2722), HellaSwag acc_norm ~29.9
# (OpenAI's GPT-2 124M: 29.55).
#
# Data, once (about 1.5 hours on 2 cores; faster with more):
#   python -m ds_train.prepare fineweb --version 10B     # data/fineweb10B/fineweb_{val,train}_%06d.bin
# HellaSwag (-h 1) reads the copy shipped in ds_train/assets.
#
# Run: bash scripts/run_gpt2_124M.sh [extra flags]. Check it first with DRY_RUN=1; one GPU: NUM_GPUS=1;
# several nodes: LAUNCHER=hostfile|mpirun|srun (scripts/lib.sh explains each).
source "$(dirname "$0")/lib.sh"
RUN_NAME=gpt2_124M
DS_CONFIG=ds_configs/gpt2_124M.json
STEPS=18865
FLAGS=(-i "$DATA_DIR/fineweb10B/fineweb_train_*.bin" -j "$DATA_DIR/fineweb10B/fineweb_val_*.bin"
       -v 250 -s 20000 -g 144 -h 1 -b 64 -t 1024 -d 524288 -r 0 -z 1 -c 0.1 -l 0.0006 -q 0.0 -u 700 -n 5000
       -x "$STEPS" -e d12)
run_until_done "$@"
