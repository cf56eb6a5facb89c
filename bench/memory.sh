#!/bin/bash
# Memory as a config choice, measured: for each setting (model, micro-batch B, recompute -r, ZeRO stage,
# offload) one `python ds_train/main.py` run on one GPU, and one table (bench/summarize.py) of its peak GPU
# memory (torch.cuda.max_memory_allocated) beside the `--dry_run` estimate, the process's peak host memory,
# ms/step, tokens/s and MFU over the steps after the compile warm-up.
#   bash bench/memory.sh GROUP...     (from the repo root; logs in $OUT, default bench_out/memory)
# Groups, T=1024 for GPT-2 and 2048 for GPT-3, random-token shards, no gradient accumulation unless noted:
#   d12    B=1/4/16/64 at ZeRO-1; B=64 at ZeRO-2, ZeRO-3, and offloaded (--offload optimizer at ZeRO-1 and 2,
#          all at ZeRO-3)
#   d12_accum  B=8/16/32 at ZeRO-1 with 0.5M-token steps (gradient accumulation 64/32/16): what -b costs at a
#          fixed total batch
#   d24    B=8/32 at ZeRO-1
#   d48    B=4/16 at ZeRO-1; B=16 at -r 1/2/3; B=32 at -r 3
#   d24_offload  B=32 with the optimizer offloaded at ZeRO-2
#   d48_offload  B=16 offloaded (optimizer at ZeRO-2, all at ZeRO-3)
#   d48_accum  B=4/8 at ZeRO-1 with 131K-token steps (accumulation 32/16)
#   c2048  gpt3:c2048 (1.3B) B=4/8 at ZeRO-1; B=8 with the optimizer offloaded at ZeRO-2
#   c2560  gpt3:c2560 (2.7B) B=2 at ZeRO-1 (no offload); B=8 with the optimizer offloaded at ZeRO-2, 8 micro-steps
#   stages d24 B=32 at ZeRO-2, ZeRO-3, -r 3, offload all; d48 B=16 at ZeRO-2, ZeRO-3 (rows the groups above leave out)
#   c2048_stages  gpt3:c2048 B=8 at -r 3 and at ZeRO-3 with offload all
#   fill   gpt3:c2048 B=8 at ZeRO-2, ZeRO-3, -r 1, -r 2; d24 B=32 at -r 1, -r 2
#   c4096  gpt3:c4096 (6.7B) -r 3 B=4 with the optimizer offloaded at ZeRO-2, 4 micro-steps
#   r3     d48 B=16 and d24 B=32 at -r 3, ZeRO-1: the two peaks tests/test_autofit.py holds the estimate to
# On the lent GPU machine carry .whl (../shared/tools/device-wheels.sh); see bench/README.md.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out/memory}
mkdir -p "$OUT"
source bench/device_env.sh
random_shards || exit 1

# measure NAME STEPS FLAGS...: the --dry_run estimate, then the run under a parent that reports its peak RSS
measure() {
  local name=$1 steps=$2; shift 2
  local flags=("${SHARDS[@]}" -x "$steps" "$@")
  echo "=== $name: $*" >&2
  "$PYTHON" ds_train/main.py --dry_run 1 "${flags[@]}" > "$OUT/$name.log" 2>&1
  timeout 540 "$PYTHON" -c 'import resource, subprocess, sys
status = subprocess.call(sys.argv[1:])
print(f"host peak RSS {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20:.1f} GiB", flush=True)
sys.exit(status)' "$PYTHON" ds_train/main.py "${flags[@]}" >> "$OUT/$name.log" 2>&1 ||
    echo "=== $name: exit status $? (see $OUT/$name.log)" >&2
}

gpt2() {  # gpt2 NAME MODEL CONFIG B FLAGS...: one micro-step of B x 1024 tokens per step
  local name=$1 model=$2 config=$3 B=$4; shift 4
  measure "$name" 6 --ds_config "ds_configs/$config" -e "$model" -t 1024 -b "$B" -d $((B * 1024)) "$@"
}

for group in "$@"; do
  case $group in
    d12)
      for B in 1 4 16 64; do gpt2 "d12_B${B}_z1" d12 gpt2_124M.json "$B" -z 1 -r 0; done
      gpt2 d12_B64_z2 d12 gpt2_124M.json 64 -z 2 -r 0
      gpt2 d12_B64_z3 d12 gpt2_124M.json 64 -z 3 -r 0
      gpt2 d12_B64_z1_offopt d12 gpt2_124M.json 64 -z 1 -r 0 --offload optimizer
      gpt2 d12_B64_z2_offopt d12 gpt2_124M.json 64 -z 2 -r 0 --offload optimizer
      gpt2 d12_B64_z3_offall d12 gpt2_124M.json 64 -z 3 -r 0 --offload all ;;
    d12_accum)
      for B in 8 16 32; do measure "d12_B${B}_z1_accum" 5 --ds_config ds_configs/gpt2_124M.json -e d12 -t 1024 -b "$B" \
        -d 524288 -z 1 -r 0; done ;;
    d24)
      for B in 8 32; do gpt2 "d24_B${B}_z1" d24 gpt2_350M.json "$B" -z 1 -r 0; done ;;
    d48)
      for B in 4 16; do gpt2 "d48_B${B}_z1" d48 gpt2_1558M.json "$B" -z 1 -r 0; done
      for r in 1 2 3; do gpt2 "d48_B16_z1_r$r" d48 gpt2_1558M.json 16 -z 1 -r "$r"; done
      gpt2 d48_B32_z1_r3 d48 gpt2_1558M.json 32 -z 1 -r 3 ;;
    d24_offload)
      gpt2 d24_B32_z2_offopt d24 gpt2_350M.json 32 -z 2 -r 0 --offload optimizer ;;
    d48_offload)
      gpt2 d48_B16_z2_offopt d48 gpt2_1558M.json 16 -z 2 -r 0 --offload optimizer
      gpt2 d48_B16_z3_offall d48 gpt2_1558M.json 16 -z 3 -r 0 --offload all ;;
    d48_accum)
      for B in 4 8; do measure "d48_B${B}_z1_accum" 4 --ds_config ds_configs/gpt2_1558M.json -e d48 -t 1024 -b "$B" \
        -d 131072 -z 1 -r 0; done ;;
    c2048)
      for B in 4 8; do measure "c2048_B${B}_z1" 5 --ds_config ds_configs/gpt3.json -e gpt3:c2048 -t 2048 -b "$B" \
        -d $((B * 2048)) -z 1 -r 0; done
      measure c2048_B8_z2_offopt 5 --ds_config ds_configs/gpt3.json -e gpt3:c2048 -t 2048 -b 8 -d 16384 -z 2 -r 0 \
        --offload optimizer ;;
    c2560)
      measure c2560_B2_z1 5 --ds_config ds_configs/gpt3.json -e gpt3:c2560 -t 2048 -b 2 -d 4096 -z 1 -r 0
      measure c2560_B8_z2_offopt 4 --ds_config ds_configs/gpt3.json -e gpt3:c2560 -t 2048 -b 8 -d 131072 -z 2 -r 0 \
        --offload optimizer ;;
    stages)
      gpt2 d24_B32_z2 d24 gpt2_350M.json 32 -z 2 -r 0
      gpt2 d24_B32_z3 d24 gpt2_350M.json 32 -z 3 -r 0
      gpt2 d24_B32_z1_r3 d24 gpt2_350M.json 32 -z 1 -r 3
      gpt2 d24_B32_z3_offall d24 gpt2_350M.json 32 -z 3 -r 0 --offload all
      gpt2 d48_B16_z2 d48 gpt2_1558M.json 16 -z 2 -r 0
      gpt2 d48_B16_z3 d48 gpt2_1558M.json 16 -z 3 -r 0 ;;
    c2048_stages)  # gpt3:c2048 (1.3B) beside the c2048 group's ZeRO-1/2 rows: whole-block recompute, ZeRO-3 offload all
      for flags in "-z 1 -r 3" "-z 3 -r 0 --offload all"; do
        measure "c2048_B8_$(echo $flags | tr -d ' -')" 5 --ds_config ds_configs/gpt3.json -e gpt3:c2048 -t 2048 -b 8 -d 16384 $flags
      done ;;
    fill)  # the stage and recompute rows the groups above leave out for gpt3:c2048 (B=8) and d24 (B=32)
      for flags in "-z 2 -r 0" "-z 3 -r 0" "-z 1 -r 1" "-z 1 -r 2"; do
        measure "c2048_B8_$(echo $flags | tr -d ' -')" 5 --ds_config ds_configs/gpt3.json -e gpt3:c2048 -t 2048 -b 8 -d 16384 $flags
      done
      gpt2 d24_B32_z1_r1 d24 gpt2_350M.json 32 -z 1 -r 1
      gpt2 d24_B32_z1_r2 d24 gpt2_350M.json 32 -z 1 -r 2 ;;
    c4096)
      measure c4096_B4_z2_offopt_r3 3 --ds_config ds_configs/gpt3.json -e gpt3:c4096 -t 2048 -b 4 -d 32768 -z 2 -r 3 \
        --offload optimizer ;;
    r3)
      gpt2 d48_B16_z1_r3 d48 gpt2_1558M.json 16 -z 1 -r 3
      gpt2 d24_B32_z1_r3 d24 gpt2_350M.json 32 -z 1 -r 3 ;;
    *) echo "unknown group $group (d12 d12_accum d24 d24_offload d48 d48_offload d48_accum c2048 c2560 stages c2048_stages fill c4096 r3)" >&2; exit 2 ;;
  esac
done 2>&1 | tee -a "$OUT/runs.txt"
ls "$OUT"/*.log > /dev/null 2>&1 || exit 2  # no run got as far as a log
"$PYTHON" bench/summarize.py "$OUT"/*.log --first 3 --last 100 | tee "$OUT/summary.txt"
