#!/usr/bin/env bash
# The quickstart: installs what it needs into .venv, then trains a 4-layer GPT (16M parameters, most of them
# the GPT-2 embedding) on the tinyshakespeare shards shipped in ds_train/assets: 300 steps of 512 tokens,
# val loss every 50 steps, a sample at the end. About 3 minutes on 2 CPU cores (fp32; machines differ by 2x); on a
# GPU 5 s of training (bf16, torch.compile) after about a minute of one-time builds (FusedAdam, the compiled graphs).
# Extra arguments are passed to ds_train/main.py (e.g. -x 1000, or -o somewhere/else).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python ds_train/main.py --ds_config ds_configs/quickstart.json \
    -e gpt2:d4:c128:h4 -t 64 -b 8 -x 300 -k cosine -l 2e-3 -u 20 -q 0.1 -v 50 -m 8 -s 300 -g 96 \
    -o runs/quickstart "$@"
