#!/usr/bin/env bash
# Installs what the tests need into .venv, then runs the test suite (real DeepSpeed, real multi-rank
# launches on the CPU) on TEST_WORKERS pytest-xdist workers, default 2: a run spends most of its time in one
# process importing torch and DeepSpeed, so two workers keep two cores busy. Test files that share cached
# runs are one xdist group each (their pytestmark), so each cached run is made once. Extra arguments go to
# pytest (e.g. -k zero; -n 0 runs in this process).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
exec .venv/bin/python -m pytest -q -n "${TEST_WORKERS:-2}" --dist loadgroup "$@"
