#!/bin/bash
# Training throughput of ds_train as it is: one table of ms/step, tokens/s, MFU and peak memory per
# configuration (bench/summarize.py over the steps after warm-up), on random-token llm.c shards.
#   bash bench/throughput.sh d12       GPU: d12 (124M), B=64, 0.5M-token steps, ZeRO 1/2/3, and ZeRO-1 with -r 1 and -r 3
#   bash bench/throughput.sh big       GPU: d24 (350M) B=32 at ZeRO-1 (0.5M tokens/step), d48 (1558M) B=16 at ZeRO-1
#                                      (131K tokens/step, fewer steps: a step is several seconds on one GPU)
#   bash bench/throughput.sh cpu       CPU: the quickstart's 4-layer model on 2 ranks (fp32)
# (from the repo root; logs in $OUT, default bench_out/throughput). On the lent GPU machine carry .whl
# (../shared/tools/device-wheels.sh); it is installed into /tmp/site first, as in gpu_d12.sh.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out/throughput}
mkdir -p "$OUT"
DATA=${DATA:-/tmp/bench_data}
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
source bench/device_env.sh
random_shards || exit 1
shards=(-i "$DATA/random_train_*.bin" -j "$DATA/random_val_*.bin" -v 100000 -m 1 -s 0)

# run NAME STEPS FLAGS...: one training run of STEPS steps, its console in $OUT/NAME.log
run() {
  local name=$1 steps=$2; shift 2
  echo "=== $name: $*" >&2
  timeout 540 "$PYTHON" ds_train/main.py "$@" -x "$steps" "${shards[@]}" > "$OUT/$name.log" 2>&1 ||
    echo "=== $name: exit status $? (see $OUT/$name.log)" >&2
}

case "${1:-d12}" in
  d12)
    d12=(--ds_config ds_configs/gpt2_124M.json -e d12 -b 64 -t 1024 -d 524288)
    run d12_z1 30 "${d12[@]}" -z 1 -r 0
    run d12_z2 30 "${d12[@]}" -z 2 -r 0
    run d12_z3 30 "${d12[@]}" -z 3 -r 0
    run d12_z1_r1 30 "${d12[@]}" -z 1 -r 1
    run d12_z1_r3 30 "${d12[@]}" -z 1 -r 3
    "$PYTHON" bench/summarize.py "$OUT"/d12_*.log --first 11 --last 30 ;;
  big)
    run d24_z1 20 --ds_config ds_configs/gpt2_350M.json -e d24 -b 32 -t 1024 -d 524288 -z 1 -r 0
    run d48_z1 12 --ds_config ds_configs/gpt2_1558M.json -e d48 -b 16 -t 1024 -d 131072 -z 1 -r 0
    "$PYTHON" bench/summarize.py "$OUT"/d24_z1.log "$OUT"/d48_z1.log --first 6 --last 20 ;;
  cpu)
    deepspeed_bin="$(dirname "$PYTHON")/deepspeed"
    OMP_NUM_THREADS=1 timeout 540 "$deepspeed_bin" --num_gpus 2 ds_train/main.py --ds_config ds_configs/quickstart.json \
      -e gpt2:d4:c128:h4 -t 64 -b 8 -z 1 -x 20 "${shards[@]}" > "$OUT/cpu_d4.log" 2>&1
    "$PYTHON" bench/summarize.py "$OUT/cpu_d4.log" --first 6 --last 20 ;;
  *) echo "usage: bash bench/throughput.sh d12|big|cpu" >&2; exit 2 ;;
esac 2>&1 | tee "$OUT/summary_${1:-d12}.txt"
