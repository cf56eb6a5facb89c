#!/bin/bash
# Weak scaling on one machine: the same per-GPU work (micro-batch B, no accumulation) on 1, 2, 4, 8 GPUs, for
# d12 (B=64) and d48 (B=16) at ZeRO-1 and ZeRO-3, so each step's gradient reduction (and, at ZeRO-3, the
# parameter gathers) is as large as it gets next to the compute. Efficiency at N GPUs = tokens/s at N / (N x
# tokens/s at 1). At the end bench/summarize.py's table and the scaling table (bench/scaling_table.py); logs in $OUT
# (default bench_out/scaling).
#   bash bench/scaling.sh [GPU counts, default: 1 2 4 8 up to the GPUs present]
# (from the repo root; on the lent GPU machine carry .whl, as for bench/throughput.sh)
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out/scaling}
mkdir -p "$OUT"
source bench/device_env.sh
random_shards || exit 1
gpus=$(nvidia-smi -L | wc -l)
counts=${*:-$(for n in 1 2 4 8; do [ "$n" -le "$gpus" ] && echo $n; done)}

for n in $counts; do
  for model in d12 d48; do
    if [ $model = d12 ]; then B=64 steps=15 json=gpt2_124M; else B=16 steps=10 json=gpt2_1558M; fi
    for z in 1 3; do
      name=${model}_z${z}_gpus$n
      echo "=== $name" >&2
      # the deepspeed launcher as a module: on the lent machine deepspeed is installed without its scripts
      timeout 540 "$PYTHON" -m deepspeed.launcher.runner --num_gpus "$n" ds_train/main.py "${SHARDS[@]}" \
        --ds_config ds_configs/$json.json -e $model -b $B -t 1024 -d $((B * 1024 * n)) -z $z -x $steps \
        > "$OUT/$name.log" 2>&1 || echo "=== $name: exit status $? (see $OUT/$name.log)" >&2
    done
  done
done
"$PYTHON" bench/summarize.py "$OUT"/*_gpus*.log --first 4 --last 15 | tee "$OUT/summary.txt"
"$PYTHON" bench/scaling_table.py "$OUT"/*_gpus*.log --first 4 --last 15 | tee -a "$OUT/summary.txt"
