#!/bin/bash
# bench/attention_mix.py, then the trainer with FlashAttention-4's forward and with cuDNN's forward before
# FlashAttention-4's backward (DS_TRAIN_ATTENTION_FORWARD=cudnn), alternating: d24 B=64 x 8 twice each, then d12
# B=64 x 8 once each, at ZeRO-1 with -fa 1. Needs flash-attn-4 (bench/lent_machine.sh installs it on the lent machine).
source bench/device_env.sh
random_shards || exit 1
"$PYTHON" bench/attention_mix.py > "$OUT/attention_mix.txt" 2>&1
touch "$OUT/mix.done"
runs() {  # runs NAME STEPS FLAGS...: the two forwards in turn
  local name=$1; shift
  train_run "${name}_fa4" "$@"
  DS_TRAIN_ATTENTION_FORWARD=cudnn train_run "${name}_cudnn" "$@"
}
for i in 1 2; do
  runs "d24_$i" 10 --ds_config ds_configs/gpt2_350M.json -e d24 -b 64 -t 1024 -d 524288 -z 1 -fa 1
  touch "$OUT/d24_$i.done"
done
runs d12 12 --ds_config ds_configs/gpt2_124M.json -e d12 -b 64 -t 1024 -d 524288 -z 1 -fa 1
"$PYTHON" bench/summarize.py "$OUT"/d24_*.log "$OUT"/d12_*.log --first 4 > "$OUT/summary.txt" 2>&1
