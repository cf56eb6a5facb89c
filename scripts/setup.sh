#!/usr/bin/env bash
# Creates .venv in the repo (once) and installs ds_train's requirements into it.
#   bash scripts/setup.sh          runtime dependencies
#   bash scripts/setup.sh --dev    plus what the tests need (and cuBLAS's headers where nvcc lacks them)
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
# Without a GPU DeepSpeed JIT-builds C++ ops on first use, once per environment: the shared-memory all-reduce that
# every CPU run loads (about 50 CPU-seconds on 2 cores) and, for the tests' offload runs, CPU Adam (about 190). They
# build in the background while pip installs the rest, which leaves one of two cores idle; a run that needs one
# before it is done waits on its build lock (ds_train says so). Their output: .venv/op_builds.log. (-W ignore below:
# numpy comes with the requirements, after this, and torch warns on import that it is missing.)
ops=""
if [ "${1:-}" = "--dev" ]; then
  ops="ShareMemCommBuilder CPUAdamBuilder"  # the tests' runs are CPU ranks, on a GPU machine too
elif [ -z "${1:-}" ] && .venv/bin/python -W ignore -c "import torch, sys; sys.exit(torch.cuda.is_available())"; then
  ops="ShareMemCommBuilder"
fi
if [ -n "$ops" ]; then
  .venv/bin/python -m pip install -q "$(grep -E '^deepspeed' requirements.txt | cut -d' ' -f1)"
  for op in $ops; do  # the environment of ds_train's CPU runs (and the tests'), so that they find these builds
    DS_ACCELERATOR=cpu CUDA_VISIBLE_DEVICES="" nohup .venv/bin/python -c "from deepspeed.accelerator import \
get_accelerator; get_accelerator().create_op_builder('$op').load()" >> .venv/op_builds.log 2>&1 &
  done
fi
.venv/bin/python -m pip install -q -r "$requirements"
# the CUDA sources' compile check (tests/test_csrc.py) on a machine whose nvcc came without cuBLAS's headers
if [ "${1:-}" = "--dev" ]; then bash scripts/cuda_headers.sh; fi
if [ "${1:-}" = "--gpu" ]; then
  cuda=$(.venv/bin/python -c "import torch; print((torch.version.cuda or '').split('.')[0])")
  [ -n "$cuda" ] || { echo "setup.sh --gpu: the torch in .venv is a CPU build; install a CUDA build of torch there first" >&2; exit 1; }
  .venv/bin/python -m pip install -q -r requirements-gpu.txt
  # flash-attn-4's [cu13] extra is this one: the CuTe DSL's CUDA 13 libraries, of the DSL version just installed
  [ "$cuda" -lt 13 ] || .venv/bin/python -m pip install -q "nvidia-cutlass-dsl[cu13]"
fi
