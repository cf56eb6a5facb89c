# The job of this folder (bash bench/lent_machine.sh start 400 bench/results/h100_2026-12-07_kernels_ms/run.sh,
# carrying .fa4b after `park`): bench/attention_bwd_tiles.py and bench/attention_tiles.py once `kernels_ms` took the
# whole call's time and the main kernel's from one profile a round, to compare with the evening's figures.
set -u -o pipefail
source bench/device_env.sh
root=$OUT
"$PYTHON" bench/attention_bwd_tiles.py d24 d12 d48 > "$root/attention_bwd_tiles.txt" 2>&1
touch "$root/bwd.done"
"$PYTHON" bench/attention_tiles.py > "$root/attention_tiles.txt" 2>&1
touch "$root/fwd.done"
