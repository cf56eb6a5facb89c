#!/bin/bash
# A long GPU job on this workplace's lent machine, as a detached job across several device calls. A call may run
# 10 minutes and the machine goes back after 30 s idle between calls, so the job runs in its own process session
# and each call watches it; no call may wait on anything here (reading results included) before the next.
#   call 1, carry .whl .fa4a:         bash bench/lent_machine.sh park
#   call 2, carry .fa4b .base:        bash bench/lent_machine.sh start SECONDS bench/owed.sh /tmp/base
#   calls 3..., carry nothing:        bash bench/lent_machine.sh watch SECONDS
# park keeps the wheels and the first half of FlashAttention-4's CUDA 13 libraries (bench/README.md: one call
# carries at most 64 MiB) in /tmp; start installs them with the second half into /tmp/site, copies this tree to
# /tmp/new and .base (the tree to compare with) to /tmp/base, starts the command there with OUT=/tmp/res, and
# watches; watch waits until /tmp/res/all.done or SECONDS (keep it under the call's limit), then packs /tmp/res
# into $OUT/res.tgz (what the call brings back). Anything after start (the job's arguments) runs in /tmp/new.
set -u -o pipefail
shopt -s nullglob  # .fa4a and .fa4b may be absent (no FlashAttention-4: attention on SDPA)
cd "$(dirname "$0")/.."
what=${1:-}
shift || true

watch() {  # watch SECONDS: report each new .done marker, stop at all.done or SECONDS, then pack /tmp/res
  local until=$(($(date +%s) + $1)) seen=""
  while [ ! -e /tmp/res/all.done ] && [ "$(date +%s)" -lt "$until" ]; do
    for marker in /tmp/res/*.done; do
      [ -e "$marker" ] && [[ " $seen " != *" $marker "* ]] && { echo "$(date +%T) $(basename "$marker")"; seen="$seen $marker"; }
    done
    sleep 5
  done
  [ -e /tmp/res/all.done ] && echo "$(date +%T) the job is done" || echo "$(date +%T) the job runs on"
  tail -n 5 /tmp/res/job.log 2>/dev/null
  tar czf "${OUT:-/tmp}/res.tgz" -C /tmp res
}

case $what in
  park)
    [ -d .whl ] || { echo "lent_machine.sh park: no .whl here: carry it (../shared/tools/device-wheels.sh builds it)" >&2; exit 2; }
    mkdir -p /tmp/park && cp -r .whl /tmp/park/ && { [ ! -d .fa4a ] || cp -r .fa4a /tmp/park/; } && ls -R /tmp/park ;;
  start)
    [ $# -ge 2 ] || { echo "lent_machine.sh start: expected SECONDS and the job's command" >&2; exit 2; }
    seconds=$1; shift
    [ -d /tmp/park/.whl ] || { echo "lent_machine.sh start: /tmp/park is empty: the machine is not the one 'park' ran on" >&2; exit 1; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      /tmp/park/.whl/*.whl .fa4b/*.whl || exit 1
    cu13=(/tmp/park/.fa4a/part_* .fa4b/part_*)  # FlashAttention-4's CUDA 13 libraries, in two halves (or none: SDPA)
    [ ${#cu13[@]} -ne 1 ] || { echo "lent_machine.sh start: one half of FlashAttention-4's libraries (${cu13[*]}):" \
      "park carries .fa4a, start .fa4b" >&2; exit 1; }
    if [ ${#cu13[@]} -gt 0 ]; then  # after pip, which replaces the folders it installs into
      cat "${cu13[@]}" | tar xJf - -C /tmp/site || exit 1
    fi
    rm -rf /tmp/new /tmp/base /tmp/res && mkdir -p /tmp/res && cp -r . /tmp/new && { [ ! -d .base ] || cp -r .base /tmp/base; }
    cat > /tmp/job.sh <<EOF
export TORCH_CUDA_ARCH_LIST=9.0 PATH=\$PATH:/usr/local/cuda/bin PYTHONUNBUFFERED=1 OUT=/tmp/res
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages TORCH_EXTENSIONS_DIR=/tmp/tx
(while true; do nvidia-smi --query-gpu=timestamp,power.draw,clocks.sm,temperature.gpu --format=csv,noheader >> /tmp/res/clocks.csv; sleep 10; done) &
sampler=\$!
cd /tmp/new && bash $*
kill \$sampler
touch /tmp/res/all.done
EOF
    setsid nohup bash /tmp/job.sh > /tmp/res/job.log 2>&1 < /dev/null &
    watch "$seconds" ;;
  watch)
    [ -e /tmp/job.sh ] || { echo "lent_machine.sh watch: no job here: the machine was given back since 'start'" >&2; exit 1; }
    watch "${1:-540}" ;;
  *) echo "lent_machine.sh: expected park, start SECONDS COMMAND... or watch SECONDS (got '$what')" >&2; exit 2 ;;
esac
