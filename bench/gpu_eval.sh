#!/bin/bash
# HellaSwag and in-loop evaluation on one GPU; see bench/README.md.
#   bash bench/gpu_eval.sh            (from the repo root; logs go to $OUT, default bench_out/)
# 1. the time of a full HellaSwag pass (10042 examples) for d12, standalone (python -m ds_train.evaluate);
# 2. d12 on the shipped tinyshakespeare with HellaSwag every 50 steps: main.log and the console, for the
#    README's plot and for the eval's cost inside training.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
source bench/device_env.sh
{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 - <<'PY'
import torch
from ds_train import convert
from ds_train.model import GPT, config_from_descriptor
cfg = config_from_descriptor("d12")
convert.write_llmc("/tmp/d12_init.bin", cfg, GPT(cfg).state_dict())
PY
  echo "=== standalone HellaSwag, d12 (initial weights), bf16, B*T = 16x1024 tokens per forward"
  python3 -m ds_train.evaluate --model /tmp/d12_init.bin --hellaswag -b 16 -t 1024
  echo "=== d12 on tinyshakespeare, -h 1 every 50 steps"
  python3 ds_train/main.py --ds_config ds_configs/gpt2_124M.json -e d12 -b 16 -t 1024 -d 16384 -x 300 \
      -l 6e-4 -u 30 -q 0.0 -c 0.1 -v 50 -m -1 -s 300 -g 64 -h 1 -o "$OUT/d12_tinyshakespeare"
} 2>&1 | tee "$OUT/log.txt"
