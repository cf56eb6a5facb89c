# Sourced by the bench/*.sh GPU scripts, from the repo root: what DeepSpeed needs on the lent GPU machine.
# That machine has no deepspeed: carry .whl (built by ../shared/tools/device-wheels.sh), installed here into
# /tmp/site. FusedAdam is JIT-built into TORCH_EXTENSIONS_DIR on first use. PYTHON defaults to python3.
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/torch_ext}
PYTHON=${PYTHON:-python3}
if [ -d .whl ] && ! "$PYTHON" -c 'import deepspeed' 2>/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

# random_shards: llm.c shards of random tokens in $DATA (20M train, 1M val), written once
random_shards() {
  [ -e "$DATA/random_val_000000.bin" ] || "$PYTHON" bench/random_shards.py "$DATA" --train 20000000 --val 1000000 >/dev/null
}
