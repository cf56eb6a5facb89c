# Sourced by the bench/*.sh GPU scripts, from the repo root: what DeepSpeed needs on the lent GPU machine.
# That machine has no deepspeed: carry .whl (built by ../shared/tools/device-wheels.sh), installed here into
# /tmp/site. FusedAdam is JIT-built into TORCH_EXTENSIONS_DIR on first use. PYTHON defaults to the repo's
# .venv where there is one (this machine), else python3 (the GPU machine).
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/torch_ext}
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
DATA=${DATA:-/tmp/bench_data}
if [ -d .whl ] && ! "$PYTHON" -c 'import deepspeed' 2>/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

# random_shards: llm.c shards of random tokens in $DATA (20M train, 1M val; RANDOM_TOKENS="TRAIN VAL" for others,
# as the tests' tiny runs take), written once
random_shards() {
  local sizes=(${RANDOM_TOKENS:-20000000 1000000})
  [ -e "$DATA/random_val_000000.bin" ] ||
    "$PYTHON" bench/random_shards.py "$DATA" --train "${sizes[0]}" --val "${sizes[1]}" >/dev/null
}
# main.py's flags for those shards, with evaluation cut to one val batch at step 0 and no sampling (a run's own
# flags come after these and win)
SHARDS=(-i "$DATA/random_train_*.bin" -j "$DATA/random_val_*.bin" -v 100000 -m 1 -s 0)
# train_run NAME STEPS FLAGS...: one training run of STEPS steps on those shards, its console in $OUT/NAME.log
# (from the tree to run: the current folder's ds_train/main.py)
train_run() {
  local name=$1 steps=$2; shift 2
  echo "=== $name: $*" >&2
  timeout 540 "$PYTHON" ds_train/main.py "${SHARDS[@]}" -x "$steps" "$@" > "$OUT/$name.log" 2>&1 ||
    echo "=== $name: exit status $? (see $OUT/$name.log)" >&2
}
# what kind of machine this is (CPU, single-thread speeds, GPU and its limits), once per results folder: lent
# machines of one kind differ by more than a change gains, and the host queues the kernels
if [ -n "${OUT:-}" ] && [ -d "$OUT" ] && [ ! -e "$OUT/host.txt" ]; then
  "$PYTHON" bench/host_probe.py > "$OUT/host.txt" 2>&1 || echo "bench/host_probe.py failed: $OUT/host.txt" >&2
fi
