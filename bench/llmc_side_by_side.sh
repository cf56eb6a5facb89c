#!/bin/bash
# llm.c's train_gpt2cu and ds_train on the same GPU in the same call, shape by shape: each shape runs llm.c, then
# ds_train, on the same random-token shards (bf16, ZeRO-1, T=1024, 0.5M-token steps), and one table gives
# ms/step, tokens/s, MFU and memory for both and ds_train's tokens/s over llm.c's.
#   LLMC_DIR=.llmc bash bench/llmc_side_by_side.sh [SHAPE...]     (from the repo root; default d12)
# SHAPE: d12 (GPT-2 124M, B=64 x 8), d12_b128 (B=128 x 4, both trainers), d24 (350M, B=32 x 16; ds_train at
# -ge 1, faster than -ge 2 at this micro-batch), d24_b64 (B=64 x 8, as scripts/run_gpt2_350M.sh; ds_train at its
# default -ge 2, faster than -ge 1 here on an H200 and an H100). LLMC_FLAGS adds flags to every llm.c run (e.g. -ge 2).
# Both trainers run at the same learning rate (LR, default llm.c's scripts' 6e-4, no warmup, no decay, as both
# trainers' defaults) for the same number of steps, so the table's last column but one compares their losses at that
# step (on random tokens both head for ln(50257) = 10.825; the same batches, as ds_train shuffles as llm.c does, but
# inits of the same distribution drawn differently, so not bit for bit). Means over the steps after warm-up
# (shape_settings below; llm.c's d12 window 11-30 is the issue's baseline's), ds_train's by bench/summarize.py. Logs
# and summary.txt in $OUT (default bench_out/llmc).
# LLMC_DIR is a copy of github.com/karpathy/llm.c (git-ignored; commit nothing of it) with NVIDIA's
# cudnn-frontend headers in LLMC_DIR/cudnn-frontend/include for its cuDNN attention (its newest version links
# against nvrtc and the driver API too); libcudnn and its headers come from the nvidia-cudnn wheel that torch's
# CUDA build installs. Without them llm.c is built without cuDNN (its own attention kernels), and the log says
# so. On the lent GPU machine carry .whl and .llmc.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out/llmc}
mkdir -p "$OUT"
LLMC_DIR=${LLMC_DIR:-.llmc}
LR=${LR:-0.0006}
source bench/device_env.sh
export PATH=$PATH:/usr/local/cuda/bin
shapes=("${@:-d12}")

# shape_settings SHAPE: each shape's flags for both trainers and the steps each is timed over, in LLMC, DS,
# LLMC_WINDOW and DS_WINDOW (both end at the runs' last step; until 2026-12-04 ds_train ran 20, 12 and 10 steps
# at its own default learning rate)
shape_settings() {
  case $1 in
    d12)      LLMC=(-e d12 -b 64)  DS=(--ds_config ds_configs/gpt2_124M.json -e d12 -b 64) ;;
    d12_b128) LLMC=(-e d12 -b 128) DS=(--ds_config ds_configs/gpt2_124M.json -e d12 -b 128) ;;
    d24)      LLMC=(-e d24 -b 32)  DS=(--ds_config ds_configs/gpt2_350M.json -e d24 -b 32 -ge 1) ;;
    d24_b64)  LLMC=(-e d24 -b 64)  DS=(--ds_config ds_configs/gpt2_350M.json -e d24 -b 64) ;;
    *)        echo "unknown shape $1 (d12, d12_b128, d24, d24_b64)"; return 2 ;;
  esac
  case $1 in
    d24)     LLMC_WINDOW=(6 20)  DS_WINDOW=(4 20) ;;
    d24_b64) LLMC_WINDOW=(4 12)  DS_WINDOW=(4 12) ;;
    *)       LLMC_WINDOW=(11 30) DS_WINDOW=(6 30) ;;
  esac
}
for shape in "${shapes[@]}"; do shape_settings "$shape" || exit 2; done  # before any build
random_shards || exit 1

build_llmc() {
  local cudnn
  cudnn=$("$PYTHON" -c 'import nvidia.cudnn; print(list(nvidia.cudnn.__path__)[0])' 2>/dev/null)
  # CUDA 13 takes a cudaMemLocation where llm.c (written for CUDA 12) passes a device number of -1 (the host)
  if nvcc --version | grep -q "release 1[3-9]"; then
    sed -i 's/cudaMemAdviseSetPreferredLocation, cudaCpuDeviceId)/cudaMemAdviseSetPreferredLocation, cudaMemLocation{cudaMemLocationTypeHost, 0})/' \
      "$LLMC_DIR/llmc/cuda_utils.cuh"
  fi
  if [ -n "$cudnn" ] && [ -d "$LLMC_DIR/cudnn-frontend/include" ]; then  # nvcc finds headers and libraries here
    mkdir -p /tmp/cudnn_lib && ln -sf "$cudnn"/lib/libcudnn.so.* /tmp/cudnn_lib/ &&
      ln -sf "$(ls "$cudnn"/lib/libcudnn.so.* | head -1)" /tmp/cudnn_lib/libcudnn.so
    export CPATH="$cudnn/include" LIBRARY_PATH=/tmp/cudnn_lib LD_LIBRARY_PATH="$cudnn/lib:${LD_LIBRARY_PATH:-}"
    (cd "$LLMC_DIR" && make train_gpt2cu USE_CUDNN=1 CUDNN_FRONTEND_PATH=cudnn-frontend/include NO_MULTI_GPU=1 \
      NO_USE_MPI=1 NVCC_LDLIBS="-lnvrtc -lcuda") > "$OUT/llmc_build.log" 2>&1 &&
      echo "llm.c built with cuDNN" | tee -a "$OUT/llmc_build.log"
  fi
  if [ ! -x "$LLMC_DIR/train_gpt2cu" ]; then
    (cd "$LLMC_DIR" && make train_gpt2cu NO_MULTI_GPU=1 NO_USE_MPI=1) >> "$OUT/llmc_build.log" 2>&1 &&
      echo "llm.c built WITHOUT cuDNN" | tee -a "$OUT/llmc_build.log" || { tail -30 "$OUT/llmc_build.log"; return 1; }
  fi
}

# llm.c builds on the CPU while a 3-step ds_train run JIT-builds its extensions (FusedAdam, the GELU epilogues)
# and fills inductor's cache, so that neither build overlaps a timed run
[ -x "$LLMC_DIR/train_gpt2cu" ] || { build_llmc & }
train_run warmup 3 --ds_config ds_configs/gpt2_124M.json -e d12 -b 64 -t 1024 -d 524288 -z 1
wait
[ -x "$LLMC_DIR/train_gpt2cu" ] || { echo "llm.c did not build ($OUT/llmc_build.log)"; exit 1; }

# llmc_run NAME STEPS FLAGS...: one llm.c run on the shards, its console in $OUT/NAME.log
llmc_run() {
  local name=$1 steps=$2; shift 2
  echo "=== $name: $*" >&2
  mkdir -p /tmp/llmc_run
  (cd "$LLMC_DIR" && timeout 300 ./train_gpt2cu -i "$DATA/random_train_*.bin" -j "$DATA/random_val_*.bin" \
    -o /tmp/llmc_run -t 1024 -d 524288 -x "$steps" -v 1000 -s 0 -h 0 -z 1 -r 0 -l "$LR" "$@" ${LLMC_FLAGS:-}) \
    > "$OUT/$name.log" 2>&1
}

windows=()
for shape in "${shapes[@]}"; do
  shape_settings "$shape" || exit 2
  llmc_run "llmc_$shape" "${LLMC_WINDOW[1]}" "${LLMC[@]}"
  train_run "ds_train_$shape" "${DS_WINDOW[1]}" "${DS[@]}" -t 1024 -d 524288 -z 1 -l "$LR"
  windows+=("$shape:${LLMC_WINDOW[0]}:${LLMC_WINDOW[1]}:${DS_WINDOW[0]}:${DS_WINDOW[1]}")
done

"$PYTHON" - "$OUT" "${windows[@]}" <<'PY' | tee "$OUT/summary.txt"
import re, statistics, sys
import torch
sys.path.insert(0, "bench")
sys.path.insert(0, ".")
from summarize import summarize
from ds_train.model import config_from_descriptor
out, windows = sys.argv[1], sys.argv[2:]  # SHAPE:llm.c's first:last:ds_train's first:last timed step
STEP = re.compile(r"^step\s+(\d+)/\d+ \|.*?\| ([\d.]+) ms", re.M)
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
print(f"{gpu} | tokens per step 524288, T=1024, bf16, ZeRO-1 | MFU over 989 TFLOP/s by llm.c's count")
print(f"{'shape':9} {'trainer':9} {'steps':>6} {'ms/step':>8} {'tokens/s':>9} {'MFU':>6} {'memory':>14} {'loss':>8} {'ds/llm.c':>8}")
for window in windows:
    shape, l0, l1, d0, d1 = window.split(":")
    l0, l1, d0, d1 = int(l0), int(l1), int(d0), int(d1)
    log = open(f"{out}/llmc_{shape}.log", errors="replace").read()
    llmc = [float(ms) for step, ms in STEP.findall(log) if l0 <= int(step) <= l1]
    ours = summarize(f"{out}/ds_train_{shape}.log", d0, d1)
    flops = config_from_descriptor(shape.split("_")[0]).flops_per_token(1024)
    if llmc:
        a = statistics.mean(llmc)
        mem = re.search(r"device memory usage: (\d+) MiB", log)
        mem = f"{int(mem.group(1)) / 1024:.1f} GiB used" if mem else "?"
        loss = re.findall(r"^step\s+\d+/\d+ \| loss ([\d.]+)", log, re.M)
        loss = f"{float(loss[-1]):.4f}" if loss else "?"
        print(f"{shape:9} {'llm.c':9} {f'{l0}-{l1}':>6} {a:8.1f} {524288e3 / a:9,.0f} {524288e3 / a * flops / 989e12:6.1%}"
              f" {mem:>14} {loss:>8}")
    else:
        print(f"{shape:9} llm.c: no step lines in {out}/llmc_{shape}.log")
    if "note" in ours:
        print(f"{shape:9} ds_train: {ours['note']}")
        continue
    ratio = f"{a / ours['ms']:.3f}" if llmc else "-"
    peak = f"{ours['peak_gib']} GiB peak"
    print(f"{shape:9} {'ds_train':9} {f'{d0}-{d1}':>6} {ours['ms']:8.1f} {ours['tok_s']:9,.0f} {ours['mfu'] / 100:6.1%}"
          f" {peak:>14} {ours['final_loss']:8.4f} {ratio:>8}")
PY
