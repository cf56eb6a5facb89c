#!/bin/bash
# Resume on a GPU, bf16: a 4-layer model (C=256) on random-token shards, 6 steps with a checkpoint every 3,
# then the step-3 checkpoint resumed (a) on the same layout and (b, c) at ZeRO-2 and ZeRO-3 with another
# micro-batch (resharded); prints the losses of steps 4-6 side by side. On one GPU all layouts have 1 rank;
# the CPU tests cover other rank counts.
#   bash bench/gpu_resume.sh      (from the repo root; same setup as gpu_d12.sh: .whl carried for DeepSpeed)
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out/resume}
mkdir -p "$OUT"
source bench/device_env.sh
random_shards || exit 1
RUNS=/tmp/gpu_resume_runs
rm -rf "$RUNS"
flags=(--ds_config ds_configs/gpt2_124M.json -e gpt2:d4:c256:h4 -t 512 -d 16384 -x 6 -n 3 -v 3 -s 0
       -l 1e-3 -u 2 -c 0.1 -i "$DATA/random_train_*.bin" -j "$DATA/random_val_*.bin")
copy_step3() {
  mkdir -p "$1/checkpoints" && cp -r "$RUNS/ref/checkpoints/step_00000003" "$1/checkpoints/" &&
    cp "$RUNS/ref/DONE_00000003" "$RUNS/ref/main.log" "$1/"
}
python3 ds_train/main.py "${flags[@]}" -b 16 -z 1 -m 2 -o "$RUNS/ref" > "$OUT/ref.log" 2>&1 || { tail -20 "$OUT/ref.log"; exit 1; }
# -m keeps the val loss on the same tokens (m x B rows from the start of the val split)
for case in "same -b 16 -z 1 -m 2" "zero2 -b 8 -z 2 -m 4" "zero3 -b 4 -z 3 -m 8"; do
  set -- $case
  name=$1; shift
  copy_step3 "$RUNS/$name"
  python3 ds_train/main.py "${flags[@]}" "$@" -o "$RUNS/$name" -y 1 > "$OUT/$name.log" 2>&1 || { tail -20 "$OUT/$name.log"; }
done
echo "losses of steps 4-6 and the final val loss: uninterrupted | same layout | ZeRO-2 -b 8 | ZeRO-3 -b 4"
paste <(grep -oE '^step +[456]/6 \| loss [0-9.]+' "$OUT/ref.log" | grep -oE '[0-9.]+$'; grep -oE '^val loss [0-9.]+' "$OUT/ref.log" | tail -1 | grep -oE '[0-9.]+$') \
      <(grep -oE '^step +[456]/6 \| loss [0-9.]+' "$OUT/same.log" | grep -oE '[0-9.]+$'; grep -oE '^val loss [0-9.]+' "$OUT/same.log" | tail -1 | grep -oE '[0-9.]+$') \
      <(grep -oE '^step +[456]/6 \| loss [0-9.]+' "$OUT/zero2.log" | grep -oE '[0-9.]+$'; grep -oE '^val loss [0-9.]+' "$OUT/zero2.log" | tail -1 | grep -oE '[0-9.]+$') \
      <(grep -oE '^step +[456]/6 \| loss [0-9.]+' "$OUT/zero3.log" | grep -oE '[0-9.]+$'; grep -oE '^val loss [0-9.]+' "$OUT/zero3.log" | tail -1 | grep -oE '[0-9.]+$')
grep -h "resharding\|resumed from" "$OUT"/*.log
