# The job of this folder (bash bench/lent_machine.sh start 560 bench/results/h100_2026-12-07_evening/run.sh, carrying
# .fa4b and .llmc after `park`): what the afternoon's job left owed, then FlashAttention-4's backward settings, quickest
# first as the device time may end it early: bench/attention_mix.py with its current timer, bench/attention_bwd_tiles.py
# (the backward's tile and pipeline settings against flash-attn-4's own, d24 first), d12 beside llm.c with the current
# code, and, where a setting's whole backward call ran at least 2% quicker than the default's on d24, the trainer with
# it against the default, d24 B=64 x 8, alternating twice.
set -u -o pipefail
source bench/device_env.sh
root=$OUT
mkdir -p "$root/attn" "$root/bwd" "$root/side_d12" "$root/ab"
"$PYTHON" bench/attention_mix.py > "$root/attn/attention_mix.txt" 2>&1
touch "$root/attn.done"
"$PYTHON" bench/attention_bwd_tiles.py d24 d12 d48 > "$root/bwd/attention_bwd_tiles.txt" 2>&1
touch "$root/bwd.done"
LLMC_DIR=.llmc OUT=$root/side_d12 bash bench/llmc_side_by_side.sh d12
touch "$root/side_d12.done"
# the d24 setting with the quickest whole call, if >= 2% under the default's and its gradient within 1e-2 of it
best=$("$PYTHON" - "$root/bwd/attention_bwd_tiles.txt" <<'PY'
import sys
rows = [line.split() for line in open(sys.argv[1]) if line.startswith("d24 B=64") and "failed:" not in line]
rows = [(float(r[-2].rstrip("%")), r[2]) for r in rows if float(r[-1]) < 1e-2]
gain, name = min(rows, default=(0.0, ""))
print(name if gain <= -2.0 else "")
PY
)
echo "=== the trainer's A/B: '${best:-none}'" >&2
if [ -n "$best" ]; then
  OUT=$root/ab
  printf '#!/bin/bash\nexec python3 bench/attention_bwd_tiles.py --train %s "$@"\n' "$best" > /tmp/python_with_setting
  chmod +x /tmp/python_with_setting
  D24=(--ds_config ds_configs/gpt2_350M.json -e d24 -b 64 -t 1024 -d 524288 -z 1)
  for i in 1 2; do
    train_run default_$i 12 "${D24[@]}"
    PYTHON=/tmp/python_with_setting train_run "${best}_$i" 12 "${D24[@]}"
  done
  "$PYTHON" bench/summarize.py "$OUT"/*.log --first 4 --last 12 | tee "$OUT/summary.txt"
fi
touch "$root/ab.done"
