#!/usr/bin/env bash
# Installs what the tests need into .venv, then runs the test suite (real DeepSpeed, real multi-rank
# launches on the CPU) on TEST_WORKERS pytest-xdist workers, default 2, one a core; with --dist worksteal a
# worker that runs out of tests takes half of what the other has left. The runs that several tests compare
# against are made once per session, by the first worker to need each (tests/conftest.py, cached_train), and
# most ds_train runs are forked from tests/zygote.py, which has torch and DeepSpeed imported already
# (TEST_FORK=0 execs them all). Extra arguments go to pytest (e.g. -k zero; -n 0 runs in this process).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
exec .venv/bin/python -m pytest -q -n "${TEST_WORKERS:-2}" --dist worksteal "$@"
