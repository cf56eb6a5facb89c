#!/bin/bash
# Weak scaling on one machine: the same per-GPU work (micro-batch B, no accumulation) on 1, 2, 4, 8 GPUs, for
# d12 (B=64) and d48 (B=16) at ZeRO-1 and ZeRO-3, so each step's gradient reduction (and, at ZeRO-3, the
# parameter gathers) is as large as it gets next to the compute. Efficiency at N GPUs = tokens/s at N / (N x
# tokens/s at 1). At the end bench/summarize.py's table and the scaling table (bench/scaling_table.py); logs in $OUT
# (default bench_out/scaling).
#   bash bench/scaling.sh [GPU counts, default: 1 2 4 8 up to the GPUs present]
# (from the repo root; on the lent GPU machine carry .whl, as for bench/throughput.sh). MODELS (default "d12 d48")
# and STAGES (default "1 3") pick the runs, MASTER_PORT the launcher's port (default 29500). MODELS=tiny is the
# tests' 2-layer model (B=8, T=32): it takes the whole script through its launches in well under a minute, in fp32 on
# CPU ranks where there is no GPU (tests/test_bench.py runs it on 1 and 2 ranks).
# The launcher hands its environment to the ranks: on the lent machines NVLink multicast stays off
# (NCCL_NVLS_ENABLE=0 and the like are set there; leave them so).
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out/scaling}
mkdir -p "$OUT"
source bench/device_env.sh
random_shards || exit 1
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
counts=${*:-$(for n in 1 2 4 8; do [ "$n" -le "$gpus" ] && echo $n; done)}
[ -n "$counts" ] || {
  echo "scaling.sh: no GPU found; name the rank counts (e.g. MODELS=tiny bash bench/scaling.sh 1 2)" >&2; exit 2; }

for n in $counts; do
  for model in ${MODELS:-d12 d48}; do
    case $model in
      d12) B=64 T=1024 steps=15 json=gpt2_124M arch=d12 ;;
      d48) B=16 T=1024 steps=10 json=gpt2_1558M arch=d48 ;;
      tiny) B=8 T=32 steps=8 json=quickstart arch=gpt2:d2:c64:h2 ;;
      *) echo "scaling.sh: MODELS: unknown model $model (d12, d48, tiny)" >&2; exit 2 ;;
    esac
    for z in ${STAGES:-1 3}; do
      name=${model}_z${z}_gpus$n
      echo "=== $name" >&2
      # the deepspeed launcher as a module: on the lent machine deepspeed is installed without its scripts
      timeout 540 "$PYTHON" -m deepspeed.launcher.runner --num_gpus "$n" --master_port "${MASTER_PORT:-29500}" \
        ds_train/main.py "${SHARDS[@]}" \
        --ds_config ds_configs/$json.json -e $arch -b $B -t $T -d $((B * T * n)) -z $z -x $steps \
        > "$OUT/$name.log" 2>&1 || echo "=== $name: exit status $? (see $OUT/$name.log)" >&2
    done
  done
done
"$PYTHON" bench/summarize.py "$OUT"/*_gpus*.log --first 4 --last 15 | tee "$OUT/summary.txt"
"$PYTHON" bench/scaling_table.py "$OUT"/*_gpus*.log --first 4 --last 15 | tee -a "$OUT/summary.txt"
