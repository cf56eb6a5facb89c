#!/bin/bash
# Training throughput of ds_train as it is: one table of ms/step, tokens/s, MFU and peak memory per
# configuration (bench/summarize.py over the steps after warm-up), on random-token llm.c shards.
#   bash bench/throughput.sh table     issue 7's table in one command: on a GPU d12 B=64 at ZeRO 1/2/3, d24 B=64 and
#                                      d48 B=16 at ZeRO-1 and 3 (0.5M- and 131K-token steps, as llm.c's scripts); then, on
#                                      any machine, the quickstart's 4-layer model on 2 CPU ranks (the cpu group)
#   bash bench/throughput.sh d12       GPU: d12 (124M), B=64, 0.5M-token steps, ZeRO 1/2/3 compiled, ZeRO-1 eager
#   bash bench/throughput.sh zero_ab   GPU: d12 at ZeRO-1, 2 and 3 in turn, ROUNDS (default 1) times, 12 steps each
#   bash bench/throughput.sh zero_ab_d48 GPU: d48 B=16 at ZeRO-1 and 3 in turn (131K-token steps), ROUNDS (default 2) times
#   bash bench/throughput.sh recompute GPU: d12 ZeRO-1 with -r 1, 2, 3
#   bash bench/throughput.sh recompute_d24 GPU: d24 B=64 x 8 (0.5M-token steps) at -r 0, 1, 2, 3, then -r 0 again
#   bash bench/throughput.sh recompute_d48 GPU: the same for d48 B=16 x 8 (131K-token steps)
#   bash bench/throughput.sh zero3_b128 GPU: d12 at B=128 x 4 (0.5M-token steps), ZeRO-1 and 3 in turn, ROUNDS (default 2)
#                                      times, then ZeRO-3 at B=64 x 8: ZeRO-3's cost with half the micro-steps
#   bash bench/throughput.sh big       GPU: d24 (350M) B=32 at ZeRO-1 (0.5M tokens/step), d48 (1558M) B=16 at ZeRO-1
#                                      (131K tokens/step, fewer steps: a step is several seconds on one GPU)
#   bash bench/throughput.sh microbatch GPU: d12 B=128 and d24 B=64 at the same 0.5M-token steps
#   bash bench/throughput.sh microbatch_d48 GPU: d48 at B=16 x 8 and B=32 x 4 (131K-token steps), alternating, ROUNDS
#                                      (default 1) times each: what a GPU with more memory than the H100 buys
#   bash bench/throughput.sh step_size_d48 GPU: d48 B=16 at 131K-token steps (x 8) and at the issue's 0.5M (x 32),
#                                      alternating, ROUNDS (default 2) times each, then once at its JSON's 1M (x 64):
#                                      the optimizer's step, paid once a step, over 8, 32 or 64 micro-steps
#   bash bench/throughput.sh microbatch_d24 GPU: d24 at B=64 x 8 and B=128 x 4 (0.5M-token steps), alternating, ROUNDS
#                                      (default 1) times each (B=128 needs more than 80 GB)
#   bash bench/throughput.sh timer     GPU: d12 with DeepSpeed's synchronizing throughput timer on and off, twice each
#   bash bench/throughput.sh gelu      GPU: d12 with GELU unfused (-ge 0) and fused (-ge 2), twice each, then -ge 1
#   bash bench/throughput.sh gelu_ab   GPU: -ge 0 and -ge 2 alternating: d12 twice each, then d24 B=32
#   bash bench/throughput.sh gelu_big  GPU: d24 B=32 and d48 B=16 at -ge 0 and -ge 2; d12 ZeRO-3 at -ge 2 (its losses
#                                      against ZeRO-1's)
#   bash bench/throughput.sh gelu_d24  GPU: d24 B=32 at -ge 0, 1 and 2 (which level suits d24's shapes)
#   bash bench/throughput.sh grad_update GPU: d12 with DeepSpeed's bf16 "immediate_grad_update" off and on, twice each,
#                                      alternating, then d24 B=32 once each
# Runs use the trainer's defaults (on a GPU: --compile 1); the first steps pay for compiling and are left out.
#   bash bench/throughput.sh flash     GPU: d12 with attention on SDPA (-fa 0) and on FlashAttention-4 (-fa 1, needs
#                                      flash-attn-4), alternating, ROUNDS (default 2) times each
#   bash bench/throughput.sh flash_big GPU: the same for d24 B=64 and d48 B=16, once each
#   bash bench/throughput.sh flash_checks GPU: d12 -fa 1 at ZeRO-3 and at -r 1 (their losses against ZeRO-1's)
#   bash bench/throughput.sh zero_knobs GPU: d12 at ZeRO-1 (the reference), at ZeRO-2 with DeepSpeed's defaults,
#                                      contiguous_gradients false and a reduce bucket of 5e7, and at ZeRO-3 with its
#                                      defaults, a prefetch bucket of 5e8 and a parameter persistence threshold of 1e6,
#                                      in turn, ROUNDS (default 1) times
#   bash bench/throughput.sh zero3     GPU: d12 ZeRO-3 with DeepSpeed's overlap_comm (its default at stage 3) on and off,
#                                      alternating twice, ZeRO-1 beside them, then a profile of one ZeRO-3 step
#   bash bench/throughput.sh inductor  GPU: d12 as it is, with Inductor autotuning the compiled matmuls
#                                      (TORCHINDUCTOR_MAX_AUTOTUNE_GEMM=1), and with its CUDA graphs
#                                      (TORCHINDUCTOR_CUDAGRAPHS=1), ROUNDS (default 1) times each
#   bash bench/throughput.sh loader    GPU: d12 with the real shard loader vs 32 batches served from memory
#   bash bench/throughput.sh eval      GPU: d12 with val loss, HellaSwag and sampling every 5 steps (their cost)
#   bash bench/throughput.sh cpu       CPU: the quickstart's 4-layer model on 2 ranks (fp32)
#   bash bench/throughput.sh cpu_malloc CPU: the same keeping freed memory (the default) and at glibc's malloc
#                                      defaults, alternating twice
# (from the repo root; logs in $OUT, default bench_out/throughput). On the lent GPU machine carry .whl
# (../shared/tools/device-wheels.sh); it is installed into /tmp/site first, as in gpu_d12.sh.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out/throughput}
mkdir -p "$OUT"
source bench/device_env.sh
random_shards || exit 1
# each size as llm.c's scripts train it on one GPU: its JSON, micro-batch B, T and tokens per step
D12=(--ds_config ds_configs/gpt2_124M.json -e d12 -b 64 -t 1024 -d 524288)
D24=(--ds_config ds_configs/gpt2_350M.json -e d24 -b 64 -t 1024 -d 524288)
D48=(--ds_config ds_configs/gpt2_1558M.json -e d48 -b 16 -t 1024 -d 131072)

# json_variant SOURCE OUT SECTION UPDATES: the DeepSpeed JSON SOURCE written to OUT with its SECTION (made if absent)
# updated by the JSON object UPDATES
json_variant() {
  "$PYTHON" -c 'import json, sys; c = json.load(open(sys.argv[1])); c.setdefault(sys.argv[3], {}).update(json.loads(sys.argv[4]))
json.dump(c, open(sys.argv[2], "w"))' "$@"
}

# micro_batches_in_turn NAME B1 B2 FLAGS...: 10 steps at -b B1, then at -b B2, ROUNDS (default 1) times, at the
# same tokens per step (FLAGS' -d), and their table
micro_batches_in_turn() {
  local name=$1 small=$2 big=$3 i
  shift 3
  for i in $(seq "${ROUNDS:-1}"); do
    train_run "${name}_b${small}_$i" 10 "$@" -b "$small"
    train_run "${name}_b${big}_$i" 10 "$@" -b "$big"
  done
  "$PYTHON" bench/summarize.py "$OUT/${name}_b${small}_"*.log "$OUT/${name}_b${big}_"*.log --first 4 --last 10
}

# cpu_run NAME [VAR=VALUE...]: the quickstart's 4-layer model on 2 CPU ranks (fp32), 20 steps, with those variables
# set, its console in $OUT/NAME.log. The ranks come from torchrun with CUDA hidden, so that they take the CPU on a GPU
# machine too (DeepSpeed's launcher sets CUDA_VISIBLE_DEVICES=0,1 for its ranks even when it runs on the CPU)
cpu_run() {
  local name=$1; shift
  local rusage=()  # the page faults of the whole process tree and its largest process's peak memory, where measurable
  [ -x /usr/bin/time ] && rusage=(/usr/bin/time -o "$OUT/$name.rusage" -f "$name: %R minor page faults, largest peak RSS %M KB")
  echo "=== $name $*" >&2
  env CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=1 "$@" "${rusage[@]}" timeout 540 "$PYTHON" -m torch.distributed.run --nproc_per_node 2 \
    ds_train/main.py --ds_config ds_configs/quickstart.json -e gpt2:d4:c128:h4 -t 64 -b 8 -z 1 -x 20 "${SHARDS[@]}" \
    > "$OUT/$name.log" 2>&1 || echo "=== $name: exit status $? (see $OUT/$name.log)" >&2
}
cpu_row() {
  cpu_run cpu_d4
  "$PYTHON" bench/summarize.py "$OUT/cpu_d4.log" --first 6 --last 20
}

case "${1:-d12}" in
  table)  # the sizes and stages of issue 7 with the defaults, then the CPU row
    if "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
      for z in 1 2 3; do train_run "table_d12_zero$z" 12 "${D12[@]}" -z $z; done
      train_run table_d24_zero1 10 "${D24[@]}" -z 1
      for z in 1 3; do train_run "table_d48_zero$z" 8 "${D48[@]}" -z $z; done
      "$PYTHON" bench/summarize.py "$OUT"/table_d12_*.log "$OUT"/table_d24_*.log "$OUT"/table_d48_*.log --first 4 --last 12
    else
      echo "(no CUDA GPU here: the CPU row only)"
    fi
    cpu_row ;;
  d12)  # the stages compiled, and ZeRO-1 eager (--compile 0) for what compiling gives
    train_run d12_z1 20 "${D12[@]}" -z 1
    train_run d12_z2 20 "${D12[@]}" -z 2
    train_run d12_z3 20 "${D12[@]}" -z 3
    train_run d12_z1_eager 20 "${D12[@]}" -z 1 --compile 0
    "$PYTHON" bench/summarize.py "$OUT"/d12_z*.log --first 6 --last 20 ;;
  zero_ab)  # the stages in turn, so that the GPU's warming up weighs on each alike
    for i in $(seq "${ROUNDS:-1}"); do
      for z in 1 2 3; do train_run "d12_zero${z}_$i" 12 "${D12[@]}" -z $z; done
    done
    "$PYTHON" bench/summarize.py "$OUT"/d12_zero*.log --first 4 --last 12 ;;
  zero_ab_d48)  # the same for d48: four times d12's layers (and ZeRO-3 hooks), 2.8 times its GPU time per micro-step
    for i in $(seq "${ROUNDS:-2}"); do
      for z in 1 3; do train_run "d48_zero${z}_$i" 10 "${D48[@]}" -z $z; done
    done
    "$PYTHON" bench/summarize.py "$OUT"/d48_zero*.log --first 4 --last 10 ;;
  recompute)  # d12 ZeRO-1 compiled at each recompute level (-r 0 is d12_z1 above)
    d12=("${D12[@]}" -z 1)
    for r in 1 2 3; do train_run "d12_r$r" 20 "${d12[@]}" -r $r; done
    "$PYTHON" bench/summarize.py "$OUT"/d12_r*.log --first 6 --last 20 ;;
  recompute_d24|recompute_d48)  # each level at its script's micro-batch, -r 0 first and last so that the GPU's
    # warming up shows against the reference
    size=${1#recompute_}
    if [ "$size" = d24 ]; then flags=("${D24[@]}" -z 1); else flags=("${D48[@]}" -z 1); fi
    for r in 0 1 2 3; do train_run "${size}_r${r}" 8 "${flags[@]}" -r $r; done
    train_run "${size}_r0_again" 8 "${flags[@]}" -r 0
    "$PYTHON" bench/summarize.py "$OUT/${size}"_r*.log --first 4 --last 8 ;;
  zero3_b128)
    for i in $(seq "${ROUNDS:-2}"); do
      for z in 1 3; do train_run "z${z}_b128_$i" 12 "${D12[@]}" -b 128 -z $z; done
    done
    train_run z3_b64 12 "${D12[@]}" -z 3
    "$PYTHON" bench/summarize.py "$OUT"/z?_b128_*.log "$OUT/z3_b64.log" --first 4 --last 12 ;;
  microbatch)  # twice the micro-batch of the d12 and big groups, at the same tokens per step
    train_run d12_b128 20 --ds_config ds_configs/gpt2_124M.json -e d12 -b 128 -t 1024 -d 524288 -z 1
    train_run d24_b64 15 "${D24[@]}" -z 1 -r 0
    "$PYTHON" bench/summarize.py "$OUT"/d12_b128.log --first 6 --last 20
    "$PYTHON" bench/summarize.py "$OUT"/d24_b64.log --first 4 --last 15 ;;
  step_size_d48)  # the same micro-batch, so each micro-step is alike; only how many share one optimizer step differs
    for i in $(seq "${ROUNDS:-2}"); do
      train_run "d48_131k_$i" 10 "${D48[@]}" -z 1
      train_run "d48_524k_$i" 6 "${D48[@]}" -d 524288 -z 1
    done
    train_run d48_1m 4 "${D48[@]}" -d 1048576 -z 1
    "$PYTHON" bench/summarize.py "$OUT"/d48_131k_*.log --first 4 --last 10
    "$PYTHON" bench/summarize.py "$OUT"/d48_524k_*.log --first 3 --last 6
    "$PYTHON" bench/summarize.py "$OUT"/d48_1m.log --first 2 --last 4 ;;
  microbatch_d48)
    micro_batches_in_turn d48 16 32 --ds_config ds_configs/gpt2_1558M.json -e d48 -t 1024 -d 131072 -z 1 -r 0 ;;
  microbatch_d24)
    micro_batches_in_turn d24 64 128 --ds_config ds_configs/gpt2_350M.json -e d24 -t 1024 -d 524288 -z 1 -r 0 ;;
  timer)  # d12 ZeRO-1 with DeepSpeed's synchronizing throughput timer on (DeepSpeed's default) and off (ds_train's),
    # alternating so that the GPU's warming up weighs on both alike
    json_variant ds_configs/gpt2_124M.json "$OUT/timer_on.json" timers '{"throughput": {"enabled": true}}'
    d12=(-e d12 -b 64 -t 1024 -d 524288 -z 1)
    for i in 1 2; do
      train_run "d12_timer_on_$i" 12 --ds_config "$OUT/timer_on.json" "${d12[@]}"
      train_run "d12_timer_off_$i" 12 --ds_config ds_configs/gpt2_124M.json "${d12[@]}"
    done
    "$PYTHON" bench/summarize.py "$OUT"/d12_timer_*.log --first 4 --last 12 ;;
  gelu)  # llm.c's -ge on d12 ZeRO-1: GELU unfused and in cuBLASLt's epilogues, alternating as the timer group does
    d12=("${D12[@]}" -z 1)
    for i in 1 2; do
      train_run "d12_ge0_$i" 12 "${d12[@]}" -ge 0
      train_run "d12_ge2_$i" 12 "${d12[@]}" -ge 2
    done
    train_run d12_ge1 12 "${d12[@]}" -ge 1
    "$PYTHON" bench/summarize.py "$OUT"/d12_ge*.log --first 4 --last 12 ;;
  flash)  # -fa 0 against -fa 1 on d12 ZeRO-1, alternating as the timer group does
    d12=("${D12[@]}" -z 1)
    for i in $(seq "${ROUNDS:-2}"); do
      train_run "d12_fa0_$i" 12 "${d12[@]}" -fa 0
      train_run "d12_fa1_$i" 12 "${d12[@]}" -fa 1
    done
    "$PYTHON" bench/summarize.py "$OUT"/d12_fa*.log --first 4 --last 12 ;;
  flash_big)
    for fa in 0 1; do
      train_run "d24_fa$fa" 10 "${D24[@]}" -z 1 -r 0 -fa $fa
      train_run "d48_fa$fa" 8 "${D48[@]}" -z 1 -r 0 -fa $fa
    done
    "$PYTHON" bench/summarize.py "$OUT"/d24_fa*.log "$OUT"/d48_fa*.log --first 4 --last 10 ;;
  flash_checks)
    d12=("${D12[@]}" -fa 1)
    train_run d12_z3_fa1 12 "${d12[@]}" -z 3
    train_run d12_r1_fa1 12 "${d12[@]}" -z 1 -r 1
    "$PYTHON" bench/summarize.py "$OUT"/d12_z3_fa1.log "$OUT"/d12_r1_fa1.log --first 4 --last 12 ;;
  gelu_big)
    for ge in 0 2; do
      train_run "d24_ge$ge" 10 --ds_config ds_configs/gpt2_350M.json -e d24 -b 32 -t 1024 -d 524288 -z 1 -r 0 -ge $ge
      train_run "d48_ge$ge" 8 "${D48[@]}" -z 1 -r 0 -ge $ge
    done
    train_run d12_z3_ge2 12 "${D12[@]}" -z 3 -ge 2
    "$PYTHON" bench/summarize.py "$OUT"/d24_ge*.log "$OUT"/d48_ge*.log --first 4 --last 10
    "$PYTHON" bench/summarize.py "$OUT"/d12_z3_ge2.log --first 4 --last 12 ;;
  gelu_ab)  # -ge 0 against -ge 2 alternating, for d12 (twice each) and d24 B=32 (once each)
    d12=("${D12[@]}" -z 1)
    for i in 1 2; do train_run "d12_ge0_$i" 10 "${d12[@]}" -ge 0; train_run "d12_ge2_$i" 10 "${d12[@]}" -ge 2; done
    for ge in 0 2; do train_run "d24_ge$ge" 9 --ds_config ds_configs/gpt2_350M.json -e d24 -b 32 -t 1024 -d 524288 -z 1 -r 0 -ge $ge; done
    "$PYTHON" bench/summarize.py "$OUT"/d12_ge*.log --first 4 --last 10
    "$PYTHON" bench/summarize.py "$OUT"/d24_ge*.log --first 4 --last 9 ;;
  gelu_d24)
    for ge in 0 1 2; do
      train_run "d24_ge$ge" 10 --ds_config ds_configs/gpt2_350M.json -e d24 -b 32 -t 1024 -d 524288 -z 1 -r 0 -ge $ge
    done
    "$PYTHON" bench/summarize.py "$OUT"/d24_ge*.log --first 4 --last 10 ;;
  grad_update)  # BF16_Optimizer folding each micro-step's bf16 gradients into the fp32 ones after backward (off)
    # or in each parameter's gradient hook, during backward (on)
    for on in false true; do
      for model_json in d12:gpt2_124M d24:gpt2_350M; do
        json_variant "ds_configs/${model_json#*:}.json" "$OUT/${model_json%%:*}_igu_$on.json" bf16 \
          "{\"immediate_grad_update\": $on}"
      done
    done
    for i in 1 2; do
      for on in false true; do train_run "d12_igu_${on}_$i" 12 --ds_config "$OUT/d12_igu_$on.json" -e d12 -b 64 -t 1024 -d 524288 -z 1; done
    done
    for on in false true; do
      train_run "d24_igu_$on" 10 --ds_config "$OUT/d24_igu_$on.json" -e d24 -b 32 -t 1024 -d 524288 -z 1 -r 0
    done
    "$PYTHON" bench/summarize.py "$OUT"/d12_igu_*.log --first 4 --last 12
    "$PYTHON" bench/summarize.py "$OUT"/d24_igu_*.log --first 4 --last 10 ;;
  zero_knobs)  # DeepSpeed's ZeRO-2 and ZeRO-3 buffer settings against their defaults, d12 B=64 x 8. One GPU reduces
    # and gathers nothing across GPUs, so this prices their bookkeeping alone; across GPUs bench/scaling.sh measures
    variants=()
    zero_variant() {  # zero_variant NAME UPDATES: ds_configs/gpt2_124M.json with its zero_optimization updated, and
      # NAME (z<stage>_...) run in that order
      json_variant ds_configs/gpt2_124M.json "$OUT/$1.json" zero_optimization "$2"
      variants+=("$1")
    }
    zero_variant z1_defaults '{"stage": 1}'
    zero_variant z2_defaults '{"stage": 2}'
    zero_variant z2_no_contiguous_gradients '{"stage": 2, "contiguous_gradients": false}'
    zero_variant z2_reduce_bucket_5e7 '{"stage": 2, "reduce_bucket_size": 50000000}'
    zero_variant z3_defaults '{"stage": 3}'
    zero_variant z3_prefetch_bucket_5e8 '{"stage": 3, "stage3_prefetch_bucket_size": 500000000}'
    zero_variant z3_persistence_1e6 '{"stage": 3, "stage3_param_persistence_threshold": 1000000}'
    d12=(-e d12 -b 64 -t 1024 -d 524288)
    for i in $(seq "${ROUNDS:-1}"); do
      for v in "${variants[@]}"; do
        train_run "d12_${v}_$i" 12 --ds_config "$OUT/$v.json" "${d12[@]}" -z "${v:1:1}"
      done
    done
    "$PYTHON" bench/summarize.py "$OUT"/d12_z*.log --first 4 --last 12 ;;
  zero3)  # one GPU communicates nothing, but overlap_comm also moves the gradients' bookkeeping to a second
    # stream, beside backward (false measured 11-17% slower on an H200: docs/performance.md)
    json_variant ds_configs/gpt2_124M.json "$OUT/z3_no_overlap.json" zero_optimization '{"stage": 3, "overlap_comm": false}'
    # the profile's: DeepSpeed's defaults, saying whether its prefetch trace is ever thrown away
    json_variant ds_configs/gpt2_124M.json "$OUT/z3_trace_warnings.json" zero_optimization \
      '{"stage": 3, "log_trace_cache_warnings": true}'
    d12=(-e d12 -b 64 -t 1024 -d 524288)
    for i in 1 2; do
      train_run "d12_z3_overlap_$i" 12 --ds_config ds_configs/gpt2_124M.json "${d12[@]}" -z 3
      train_run "d12_z3_no_overlap_$i" 12 --ds_config "$OUT/z3_no_overlap.json" "${d12[@]}" -z 3
    done
    train_run d12_z1 12 --ds_config ds_configs/gpt2_124M.json "${d12[@]}" -z 1
    "$PYTHON" bench/summarize.py "$OUT"/d12_z*.log --first 4 --last 12
    timeout 300 "$PYTHON" bench/profile_step.py "${SHARDS[@]}" --ds_config "$OUT/z3_trace_warnings.json" "${d12[@]}" -z 3 \
      > "$OUT/profile_d12_z3.txt" 2>&1 ;;
  inductor)  # torch.compile's other modes, set through Inductor's environment variables: max-autotune's GEMM
    # search (Triton templates against cuBLAS, per shape) and reduce-overhead's CUDA graphs
    d12=("${D12[@]}" -z 1)
    for i in $(seq "${ROUNDS:-1}"); do
      train_run "d12_default_$i" 12 "${d12[@]}"
      TORCHINDUCTOR_MAX_AUTOTUNE_GEMM=1 train_run "d12_autotune_gemm_$i" 12 "${d12[@]}"
      TORCHINDUCTOR_CUDAGRAPHS=1 train_run "d12_cudagraphs_$i" 12 "${d12[@]}"
    done
    "$PYTHON" bench/summarize.py "$OUT"/d12_default_*.log "$OUT"/d12_autotune_gemm_*.log "$OUT"/d12_cudagraphs_*.log \
      --first 4 --last 12 ;;
  big)
    train_run d24_z1 15 --ds_config ds_configs/gpt2_350M.json -e d24 -b 32 -t 1024 -d 524288 -z 1 -r 0
    train_run d48_z1 12 "${D48[@]}" -z 1 -r 0
    "$PYTHON" bench/summarize.py "$OUT"/d24_z1.log "$OUT"/d48_z1.log --first 4 --last 15 ;;
  loader)  # d12 ZeRO-1 with the real shard loader, then with 32 batches served from pinned memory
    d12=("${D12[@]}" -z 1)
    for mode in real memory; do
      echo "=== loader_$mode" >&2
      timeout 540 "$PYTHON" bench/loader_stall.py $mode "${SHARDS[@]}" "${d12[@]}" -x 15 > "$OUT/loader_$mode.log" 2>&1
    done
    "$PYTHON" bench/summarize.py "$OUT"/loader_*.log --first 4 --last 15 ;;
  eval)  # d12 ZeRO-1 with val loss (-m 20), HellaSwag (10042 examples) and a 64-token sample every 5 steps
    train_run d12_eval 10 "${D12[@]}" -z 1 -v 5 -m 20 -h 1 -s 5 -g 64
    grep -E "^eval at|^HellaSwag" "$OUT/d12_eval.log"
    "$PYTHON" bench/summarize.py "$OUT/d12_eval.log" --first 2 --last 10 ;;
  cpu)
    cpu_row ;;
  cpu_malloc)  # CPU ranks that keep the memory they free (ds_train/host_memory.py) against glibc's defaults, twice
    for round in 1 2; do
      cpu_run cpu_d4_kept_$round
      cpu_run cpu_d4_glibc_default_$round MALLOC_MMAP_MAX_=65536  # a malloc setting of the user's own: ds_train keeps it
    done
    "$PYTHON" bench/summarize.py "$OUT"/cpu_d4_*_[12].log --first 6 --last 20
    cat "$OUT"/cpu_d4_*_[12].rusage 2>/dev/null ;;
  *) echo "usage: bash bench/throughput.sh table|d12|zero_ab|zero_ab_d48|recompute|recompute_d24|recompute_d48|microbatch|microbatch_d48|microbatch_d24|timer|gelu|gelu_ab|gelu_big|gelu_d24|grad_update|flash|flash_big|flash_checks|zero_knobs|zero3|inductor|big|loader|eval|cpu|cpu_malloc" >&2; exit 2 ;;
esac 2>&1 | tee "$OUT/summary_${1:-d12}.txt"
