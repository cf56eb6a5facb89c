# Shared by the run_*.sh reproduction scripts (sourced, not run): how to launch ds_train on one machine or
# many, the resume loop, and the dry-run and smoke modes. Each run script sets RUN_NAME, DS_CONFIG, STEPS
# and the FLAGS array (the run's llm.c flags) and calls run_until_done; anything the user passes to the
# script is appended to FLAGS (flags given later win), e.g. `bash scripts/run_gpt2_124M.sh -b 32`.
#
# Environment (all optional):
#   NUM_GPUS     GPUs per node (default: every GPU nvidia-smi lists). Gradient accumulation adapts to the
#                total GPU count, so 1 GPU runs the same optimisation as 8, just longer: NUM_GPUS=1.
#   NUM_NODES    nodes in the job (default 1; with LAUNCHER=hostfile, the hostfile's line count)
#   LAUNCHER     deepspeed (default: `deepspeed --num_gpus` on this machine)
#                hostfile  (`deepspeed --hostfile $HOSTFILE`: ssh/pdsh to each node; or, with NODE_RANK set,
#                           start this node by hand: --no_ssh --node_rank $NODE_RANK --master_addr $MASTER_ADDR)
#                mpirun    (`mpirun -np NUM_NODES*NUM_GPUS $MPIRUN_ARGS`; ranks found through mpi4py;
#                           e.g. MPIRUN_ARGS="--host node1:8,node2:8")
#                srun      (one task per GPU inside a SLURM allocation: see scripts/slurm.sbatch)
#   OUT_DIR      run directory (default log_$RUN_NAME, as llm.c's scripts)
#   DATA_DIR     where `python -m ds_train.prepare` wrote the shards (default data)
#   DRY_RUN=1    print the resolved run for NUM_NODES*NUM_GPUS ranks (steps, tokens per step, accumulation,
#                memory estimate) and exit; needs no GPU and no data
#   SMOKE=1      a tiny model for a few steps on the shipped tinyshakespeare (fp32, CPU ranks when there
#                is no GPU), the same launcher and resume loop: what the tests run
#   PYTHON       the Python that has ds_train's requirements (default: .venv/bin/python, else python3)
#   MAX_FAILS    the resume loop gives up after this many runs in a row that fail without saving a new
#                checkpoint (default 3: a crash that recurs before any progress, such as a lost node, is not
#                retried for ever); 0 retries for ever, as llm.c's scripts do

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
DATA_DIR=${DATA_DIR:-data}
LAUNCHER=${LAUNCHER:-deepspeed}
NUM_NODES=${NUM_NODES:-1}
if [ -z "${NUM_GPUS:-}" ]; then
  NUM_GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  if [ "$NUM_GPUS" -eq 0 ]; then
    if [ "${SMOKE:-0}" = 1 ]; then NUM_GPUS=2  # two CPU ranks
    elif [ "${DRY_RUN:-0}" = 1 ]; then NUM_GPUS=8  # plan llm.c's 8-GPU node
    else echo "$0: no GPU found (nvidia-smi); set NUM_GPUS, or SMOKE=1 for a CPU smoke run" >&2; exit 2; fi
  fi
fi
if [ "$LAUNCHER" = hostfile ] && [ -n "${HOSTFILE:-}" ] && [ "${NUM_NODES}" = 1 ]; then
  NUM_NODES=$(grep -c 'slots=' "$HOSTFILE")
fi
for count in NUM_GPUS NUM_NODES; do  # a 0 would also make DRY_RUN's --dry_run 0, which means a real run
  [[ ${!count} =~ ^[1-9][0-9]*$ ]] || { echo "$0: $count=${!count}: expected a whole number >= 1" >&2; exit 2; }
done
MAX_FAILS=${MAX_FAILS:-3}
[[ $MAX_FAILS =~ ^[0-9]+$ ]] || { echo "$0: MAX_FAILS=$MAX_FAILS: expected a whole number >= 0" >&2; exit 2; }

# The smoke mode's flags replace the run's size, data and schedule length, nothing else.
SMOKE_FLAGS=(-e gpt2:d2:c64:h2 -i ds_train/assets/tinyshakespeare/tiny_shakespeare_train.bin
             -j ds_train/assets/tinyshakespeare/tiny_shakespeare_val.bin
             -t 32 -b 4 -d $((4 * 32 * NUM_NODES * NUM_GPUS)) -x 6 -n 2 -nm 0 -nk 0 -v 3 -m 2 -s 0 -g 16 -h 0 -u 2)

set_launch() {  # LAUNCH: the launcher and ds_train/main.py, without the run's flags
  local main=(ds_train/main.py --ds_config "$DS_CONFIG")
  local deepspeed_bin mpirun_bin port=${MASTER_PORT:-29500}
  deepspeed_bin="$(dirname "$PYTHON")/deepspeed"  # the launchers of PYTHON's environment, else PATH's
  [ -x "$deepspeed_bin" ] || deepspeed_bin=deepspeed
  mpirun_bin="$(dirname "$PYTHON")/mpirun"
  [ -x "$mpirun_bin" ] || mpirun_bin=mpirun
  case "$LAUNCHER" in
    deepspeed) LAUNCH=("$deepspeed_bin" --num_gpus "$NUM_GPUS" --master_port "$port" "${main[@]}") ;;
    hostfile)
      : "${HOSTFILE:?LAUNCHER=hostfile needs HOSTFILE, a file of lines: host slots=N}"
      LAUNCH=("$deepspeed_bin" --hostfile "$HOSTFILE" --master_port "$port")
      if [ -n "${NODE_RANK:-}" ]; then  # this node started by hand: no ssh
        : "${MASTER_ADDR:?starting nodes by hand with NODE_RANK needs MASTER_ADDR, the address of node 0}"
        LAUNCH+=(--no_ssh --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR")
      fi
      LAUNCH+=("${main[@]}") ;;
    # shellcheck disable=SC2206  # MPIRUN_ARGS and SRUN_ARGS are several words by design
    mpirun) LAUNCH=("$mpirun_bin" -np $((NUM_NODES * NUM_GPUS)) ${MPIRUN_ARGS:-} "$PYTHON" "${main[@]}") ;;
    # shellcheck disable=SC2206
    srun) LAUNCH=(srun ${SRUN_ARGS:-} bash scripts/srun_task.sh "$PYTHON" "${main[@]}") ;;
    *) echo "$0: LAUNCHER=$LAUNCHER: expected deepspeed, hostfile, mpirun or srun" >&2; exit 2 ;;
  esac
}

STOP_REQUESTED=""
CHILD=""
forward_stop() {  # Ctrl-C or SIGTERM to this script: every rank saves at its next step boundary, then we stop
  STOP_REQUESTED=$1
  # to the launcher's whole process group: the `deepspeed` command itself dies of SIGTERM without passing it on
  [ -n "$CHILD" ] && kill -TERM -- "-$CHILD" 2>/dev/null || true
}

newest_checkpoint() {  # the DONE marker of the newest complete checkpoint in OUT_DIR, or nothing
  [ -d "$OUT_DIR" ] || return 0
  find "$OUT_DIR" -maxdepth 1 -name 'DONE_[0-9]*' -printf '%f\n' | sort | tail -n 1
}

run_until_done() {
  OUT_DIR=${OUT_DIR:-log_$RUN_NAME}
  local flags=("${FLAGS[@]}")
  if [ "${SMOKE:-0}" = 1 ]; then
    flags+=("${SMOKE_FLAGS[@]}")
    STEPS=6
    DS_CONFIG=${SMOKE_DS_CONFIG:-ds_configs/quickstart.json}
  fi
  flags+=("$@")
  if [ "${DRY_RUN:-0}" = 1 ]; then
    exec "$PYTHON" ds_train/main.py --ds_config "$DS_CONFIG" --dry_run $((NUM_NODES * NUM_GPUS)) "${flags[@]}" -o "$OUT_DIR"
  fi
  local done_file pending_file status before fails=0
  done_file=$(printf '%s/DONE_%08d' "$OUT_DIR" "$STEPS")
  pending_file=$(printf '%s/EVAL_PENDING_%08d' "$OUT_DIR" "$STEPS")  # a stop cut the last step's evaluation short
  run_done() { [ -f "$done_file" ] && [ ! -f "$pending_file" ]; }
  set_launch
  trap 'forward_stop INT' INT
  trap 'forward_stop TERM' TERM
  # as llm.c's scripts: if the run stalls or crashes, resume it (-y 1) until the last step's checkpoint exists (and,
  # unlike theirs, until its evaluation is done: a resumed run evaluates a step whose evaluation a stop cut short)
  while ! run_done; do
    before=$(newest_checkpoint)
    setsid "${LAUNCH[@]}" "${flags[@]}" -o "$OUT_DIR" -y 1 &  # in a process group of its own: see forward_stop
    CHILD=$!
    status=0
    wait "$CHILD" || status=$?
    while kill -0 "$CHILD" 2>/dev/null; do status=0; wait "$CHILD" || status=$?; done  # a trap interrupted wait
    while kill -0 -- "-$CHILD" 2>/dev/null; do sleep 0.5; done  # ranks still saving after their launcher left
    CHILD=""
    run_done && break
    if [ -n "$STOP_REQUESTED" ]; then
      echo "$0: stopped on SIG$STOP_REQUESTED; run the same command again to resume from $OUT_DIR" >&2
      exit $([ "$STOP_REQUESTED" = INT ] && echo 130 || echo 143)
    fi
    if [ "$status" -eq 2 ]; then  # ds_train refused its input: a retry would fail the same way
      echo "$0: ds_train stopped with a usage error (exit 2: bad input, or settings that run out of memory); fix the" \
           "settings above and run again" >&2
      exit 2
    fi
    if [ "$(newest_checkpoint)" != "$before" ]; then fails=0; else fails=$((fails + 1)); fi
    if [ "$MAX_FAILS" -gt 0 ] && [ "$fails" -ge "$MAX_FAILS" ]; then
      echo "$0: $fails runs in a row failed without saving a new checkpoint (the last with exit status $status);" \
           "giving up (MAX_FAILS=$MAX_FAILS). Fix what the log above shows, then run the same command again to resume" \
           "from $OUT_DIR" >&2
      exit $((status ? status : 1))  # not 0: the run is not done
    fi
    echo "$0: the run ended with exit status $status before $done_file; resuming in 1 s" >&2
    sleep 1
  done
  echo "$0: $done_file exists: the run is complete"
}
