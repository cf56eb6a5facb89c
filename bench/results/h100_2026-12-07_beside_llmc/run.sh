# The job of this folder (bash bench/lent_machine.sh start 500 bench/results/h100_2026-12-07_beside_llmc/run.sh,
# carrying .fa4b and .llmc after `park`): the code of c6b898d (cuDNN's attention forward before FlashAttention-4's
# backward) beside llm.c's train_gpt2cu on one lent GPU, most wanted first, as the device time may end it early:
# d24 B=64 x 8 beside llm.c (the goal furthest from met), d48 B=16 at the 0.5M-token steps, d24 at -ge 1
# and -ge 0 (the default -ge 2 was chosen for d24 at B=64 on an H200 on 2026-12-02), d12 beside llm.c, and the
# attention kernels again by bench/attention_mix.py's current timer.
set -u -o pipefail
source bench/device_env.sh
root=$OUT
mkdir -p "$root/side" "$root/d48" "$root/side_d12" "$root/attn"
LLMC_DIR=.llmc OUT=$root/side bash bench/llmc_side_by_side.sh d24_b64
touch "$root/side.done"
OUT=$root/d48
train_run d48_524k 6 --ds_config ds_configs/gpt2_1558M.json -e d48 -b 16 -t 1024 -d 524288 -z 1
"$PYTHON" bench/summarize.py "$OUT/d48_524k.log" --first 3 --last 6 | tee "$OUT/d48.txt"
touch "$root/d48.done"
OUT=$root/side
D24=(--ds_config ds_configs/gpt2_350M.json -e d24 -b 64 -t 1024 -d 524288 -z 1 -l 0.0006)
train_run ds_train_d24_ge1 12 "${D24[@]}" -ge 1
train_run ds_train_d24_ge0 12 "${D24[@]}" -ge 0
"$PYTHON" bench/summarize.py "$OUT"/ds_train_d24_b64.log "$OUT"/ds_train_d24_ge*.log --first 4 --last 12 | tee "$OUT/d24_ge.txt"
touch "$root/ge.done"
LLMC_DIR=.llmc OUT=$root/side_d12 bash bench/llmc_side_by_side.sh d12
touch "$root/side_d12.done"
"$PYTHON" bench/attention_mix.py > "$root/attn/attention_mix.txt" 2>&1
touch "$root/attn.done"
