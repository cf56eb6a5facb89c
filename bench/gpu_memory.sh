#!/bin/bash
# Peak GPU memory of d12 (GPT-2 124M, B=64) and d48 (GPT-2 1558M, B=16) at T=1024, bf16, for each ZeRO stage
# and recompute level, on one GPU, next to ds_train's --dry_run estimate. Each configuration is one
# `python ds_train/main.py` of 2 steps without gradient accumulation (the second step runs with AdamW's
# state allocated); the peak is torch.cuda.max_memory_allocated, which the run prints at its end. The
# README sets these beside `--dry_run`'s estimates (computed anywhere: no GPU needed).
#   bash bench/gpu_memory.sh [d12|d48 ...]      (from the repo root; logs in $OUT, default bench_out/memory)
# ZeRO-0 runs in fp32 (ds_train refuses bf16 without ZeRO), for d12 only: d48 in fp32 needs ~25 GB of model
# states plus twice the bf16 activations. On one GPU ZeRO partitions nothing; the estimate for 8 GPUs shows
# what the stages save there. Same setup as gpu_d12.sh (.whl carried for DeepSpeed).
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out/memory}
mkdir -p "$OUT"
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
DATA=${DATA:-/tmp/bench_data}
source bench/device_env.sh
random_shards || exit 1
echo '{"bf16": {"enabled": false}, "gradient_clipping": 1.0}' > "$OUT/fp32.json"

# measure NAME MODEL B STAGE RECOMPUTE: one line "NAME | peak GiB | step 2's time"
measure() {
  local name=$1 model=$2 B=$3 stage=$4 r=$5 config=ds_configs/gpt2_124M.json
  [ "$stage" = 0 ] && config=$OUT/fp32.json
  local flags=(--ds_config "$config" -e "$model" -b "$B" -t 1024 -d $((B * 1024)) -z "$stage" -r "$r" -x 2 -v 1000
               -m 1 -s 0 -i "$DATA/random_train_*.bin" -j "$DATA/random_val_*.bin")
  timeout 300 python3 ds_train/main.py "${flags[@]}" > "$OUT/$name.log" 2>&1
  local status=$? peak
  peak=$(grep -o 'peak memory [0-9.]* GiB' "$OUT/$name.log" | grep -o '[0-9.]*' | tail -1)
  if [ -z "$peak" ]; then
    grep -q 'OutOfMemoryError\|CUDA out of memory' "$OUT/$name.log" && peak="out of memory" || peak="failed ($status)"
  fi
  echo "$name | $peak | $(grep -E '^step +2/2' "$OUT/$name.log" | grep -oE '[0-9.]+ ms')"
}

main() {
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  echo "config | peak memory (GiB) | step 2"
  local models=("$@")
  [ ${#models[@]} -gt 0 ] || models=(d12 d48)
  for model in "${models[@]}"; do
    for stage in 0 1 2 3; do
      for r in 0 1 2 3; do
        case $model in
          d12) measure "d12_B64_z${stage}_r${r}" d12 64 "$stage" "$r" ;;
          d48) [ "$stage" = 0 ] || measure "d48_B16_z${stage}_r${r}" d48 16 "$stage" "$r" ;;
        esac
      done
    done
  done
}

main "$@" 2>&1 | tee "$OUT/summary.txt"
