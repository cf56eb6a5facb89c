#!/usr/bin/env bash
# Creates .venv in the repo (once) and installs ds_train's requirements into it.
#   bash scripts/setup.sh          runtime dependencies
#   bash scripts/setup.sh --dev    plus what the tests need
# torch: an importable torch in .venv is kept (install your CUDA build there first if you need a specific
# one); otherwise TORCH_VERSION (default 2.13.0, the release the tests run on) is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
requirements=requirements.txt
[ "${1:-}" = "--dev" ] && requirements=requirements-dev.txt
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -r "$requirements"
