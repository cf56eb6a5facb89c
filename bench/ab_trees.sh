#!/bin/bash
# A/B of two versions of the code in one call on one GPU: the same training run from a base tree and from this
# tree, alternating ROUNDS times so that the GPU's warming up weighs on both alike, then bench/summarize.py over
# the logs (named base_I and new_I).
#   bash bench/ab_trees.sh BASE_TREE NAME ROUNDS STEPS main.py-flags...
# BASE_TREE is a copy of the code to compare with, e.g. `git archive HEAD | tar -x -C .base` before the change
# (on the lent GPU machine carry it, and .whl). Each tree JIT-builds its extensions into its own folder, even
# when both have the same ds_train/csrc: torch's build files name each source by its path, so one folder shared by
# two trees rebuilt ds_train's extensions at every switch (a minute a run, 2026-12-04).
# Logs in $OUT/NAME (default bench_out/ab). FIRST=new runs this tree first in each round (a second call in the other
# order, where a single round per call is all the device time allows). NEW_ENV="VAR=value ..." sets those for this
# tree's runs only; with BASE_TREE . (this tree) that is the same code with and without them, both building into
# TORCH_EXTENSIONS_DIR itself (bench/owed.sh's gemm_ab part: bench/gemm_algos.py's choices in the trainer).
set -u -o pipefail
cd "$(dirname "$0")/.."
base=$(cd "$1" && pwd) name=$2 rounds=$3 steps=$4
shift 4
OUT=${OUT:-bench_out/ab}/$name
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # the runs start in either tree
source bench/device_env.sh
random_shards || exit 1
[[ $PYTHON == */* ]] && PYTHON=$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")  # the runs start in either tree
extensions=${TORCH_EXTENSIONS_DIR}

order="base new"
[ "${FIRST:-base}" = new ] && order="new base"
read -ra new_env <<< "${NEW_ENV:-}"
[ ${#new_env[@]} -eq 0 ] || echo "${new_env[*]}" > "$OUT/new_env.txt"  # what the new side's runs had set
for i in $(seq "$rounds"); do
  for side in $order; do
    tree=$([ $side = base ] && echo "$base" || pwd)
    folder=$extensions/$side
    [ "$base" = "$(pwd)" ] && folder=$extensions  # one tree: nothing to keep apart
    (
      cd "$tree"
      if [ $side = new ]; then for setting in "${new_env[@]}"; do export "$setting"; done; fi
      TORCH_EXTENSIONS_DIR=$folder train_run "${side}_$i" "$steps" "$@"
    )
  done
done
"$PYTHON" bench/summarize.py "$OUT"/base_*.log "$OUT"/new_*.log --first 4 --last "$steps" 2>&1 | tee "$OUT/summary.txt"
