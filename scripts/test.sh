#!/usr/bin/env bash
# Installs what the tests need into .venv, then runs the test suite (real DeepSpeed, real multi-rank
# launches on the CPU; about 16 minutes on 2 cores). Extra arguments go to pytest (e.g. -k zero).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
exec .venv/bin/python -m pytest -q "$@"
