#!/bin/bash
# d12 (GPT-2 124M) throughput on one GPU, plus a quickstart smoke run; see bench/README.md.
#   bash bench/gpu_d12.sh            (from the repo root; logs go to $OUT, default bench_out/)
# On the lent GPU machine (no deepspeed there) carry .whl (built by ../shared/tools/device-wheels.sh):
# this script installs it into /tmp/site first.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
# ds_train itself hands DeepSpeed a plain arch list when the environment has one like "9.0a" (which
# DeepSpeed 0.19.8's JIT builder cannot parse); FusedAdam is JIT-built into TORCH_EXTENSIONS_DIR on first use

source bench/device_env.sh

# run NAME TIMEOUT_S ARGS...: one ds_train invocation, its console in $OUT/NAME.log
run() {
  local name=$1 limit=$2; shift 2
  echo; echo "=== $name: python ds_train/main.py $*"
  local t0=$SECONDS
  timeout "$limit" python3 ds_train/main.py "$@" 2>&1 | tee "$OUT/$name.log"
  echo "=== $name: exit code ${PIPESTATUS[0]}, $((SECONDS - t0)) s wall"
}

main() {
  echo "=== environment (TORCH_CUDA_ARCH_LIST='${TORCH_CUDA_ARCH_LIST:-}')"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c 'import torch, sys; print(sys.version, torch.__version__, "cuda", torch.version.cuda)'
  python3 -c 'import deepspeed, triton, numpy; print("deepspeed", deepspeed.__version__, "triton", triton.__version__, "numpy", numpy.__version__)' 2>&1 | grep -v '^\['
  nvcc --version | tail -2
  nvidia-smi --query-gpu=clocks.sm,clocks.mem,power.draw,temperature.gpu,utilization.gpu --format=csv

  python3 bench/random_shards.py "$DATA" --train 20000000 --val 1000000 || return 1
  local shards=(-i "$DATA/random_train_*.bin" -j "$DATA/random_val_*.bin")
  local d12=(--ds_config ds_configs/gpt2_124M.json -e d12 -b 16 -t 1024 -z 1 -v 1000 -m 1 -s 0)

  # 4. the default path: tinyshakespeare, quickstart JSON (bf16 "auto", ZeRO 1); first, so it pays FusedAdam's JIT build
  run quickstart 120 --ds_config ds_configs/quickstart.json -e gpt2:d4:c128:h4 -t 64 -b 8 -x 20 -v 10 -m 4 -s 20 -g 32 -r 0
  # 1. 0.5M-token steps (grad accumulation 32)
  run d12_accum32 210 "${d12[@]}" -d 524288 -r 0 -x 30 "${shards[@]}"
  # 2. one micro-batch per step
  run d12_noaccum 90 "${d12[@]}" -d 16384 -r 0 -x 30 "${shards[@]}"
  # 3. as 1 with GELU recompute
  run d12_accum32_r1 150 "${d12[@]}" -d 524288 -r 1 -x 20 "${shards[@]}"

  nvidia-smi --query-gpu=clocks.sm,clocks.mem,power.draw,temperature.gpu,utilization.gpu --format=csv
  echo; echo "=== warnings and errors (count, line)"
  grep -hiE 'warn|error|traceback|exception' "$OUT"/quickstart.log "$OUT"/d12_*.log | sort | uniq -c | sort -rn | head -40
  echo; echo "=== summary (steps 11-30; the r1 run has 20 steps, so 11-20)"
  python3 bench/summarize.py "$OUT"/d12_accum32.log "$OUT"/d12_noaccum.log "$OUT"/d12_accum32_r1.log "$OUT"/quickstart.log | tee "$OUT/summary.txt"
}

main 2>&1 | tee "$OUT/log.txt"
