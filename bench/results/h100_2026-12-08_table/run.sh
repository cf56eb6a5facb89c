# The job of this folder (bash bench/lent_machine.sh start 540 bench/results/gpu_2026-12-08_table/run.sh, carrying
# .fa4b and .llmc after `park`; gpu_2026-12-08_table was this folder's name until the GPU was known): the tree of
# fcc2abd (the trainer as on 2026-12-07), d24 beside llm.c first (the open
# goal), then issue 7's table by its one command on the GPU (the README's was an H200's of 2026-12-04, older
# code), then d12 beside llm.c if the device time lasts.
set -u -o pipefail
source bench/device_env.sh
root=$OUT
mkdir -p "$root/side_d24" "$root/table" "$root/side_d12"
LLMC_DIR=.llmc OUT=$root/side_d24 bash bench/llmc_side_by_side.sh d24_b64 > "$root/side_d24/console.txt" 2>&1
touch "$root/side_d24.done"
OUT=$root/table bash bench/throughput.sh table > "$root/table/console.txt" 2>&1
touch "$root/table.done"
LLMC_DIR=.llmc OUT=$root/side_d12 bash bench/llmc_side_by_side.sh d12 > "$root/side_d12/console.txt" 2>&1
touch "$root/side_d12.done"
