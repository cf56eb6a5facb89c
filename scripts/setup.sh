#!/usr/bin/env bash
# Creates .venv in the repo (once) and installs ds_train's requirements into it.
#   bash scripts/setup.sh          runtime dependencies
#   bash scripts/setup.sh --dev    plus what the tests need
#   bash scripts/setup.sh --gpu    plus FlashAttention-4 (requirements-gpu.txt; -fa 1, for Hopper or newer GPUs),
#                                  with its CUDA 13 libraries where torch is a CUDA 13 build
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
if [ "${1:-}" = "--gpu" ]; then
  cuda=$(.venv/bin/python -c "import torch; print((torch.version.cuda or '').split('.')[0])")
  [ -n "$cuda" ] || { echo "setup.sh --gpu: the torch in .venv is a CPU build; install a CUDA build of torch there first" >&2; exit 1; }
  .venv/bin/python -m pip install -q -r requirements-gpu.txt
  # flash-attn-4's [cu13] extra is this one: the CuTe DSL's CUDA 13 libraries, of the DSL version just installed
  [ "$cuda" -lt 13 ] || .venv/bin/python -m pip install -q "nvidia-cutlass-dsl[cu13]"
fi
