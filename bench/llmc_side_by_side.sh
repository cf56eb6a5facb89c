#!/bin/bash
# llm.c's train_gpt2cu and ds_train on the same GPU in the same call: d12 (GPT-2 124M), B=64, T=1024,
# 0.5M-token steps (accumulation 8), bf16, ZeRO-1, on the same random-token shards; mean ms/step over steps
# 11-30 for llm.c (its own step lines) and 6-20 for ds_train (summarize.py), and their ratio.
#   LLMC_DIR=.llmc bash bench/llmc_side_by_side.sh     (from the repo root; logs in $OUT, default bench_out/llmc)
# LLMC_DIR is a copy of github.com/karpathy/llm.c (git-ignored; commit nothing of it) with NVIDIA's
# cudnn-frontend headers in LLMC_DIR/cudnn-frontend/include for its cuDNN attention (its newest version links
# against nvrtc and the driver API too); libcudnn and its headers
# come from the nvidia-cudnn wheel that torch's CUDA build installs. Without them llm.c is built without
# cuDNN (its own attention kernels), and the log says so. On the lent GPU machine carry .whl and .llmc.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out/llmc}
mkdir -p "$OUT"
LLMC_DIR=${LLMC_DIR:-.llmc}
source bench/device_env.sh
random_shards || exit 1
export PATH=$PATH:/usr/local/cuda/bin

cudnn=$("$PYTHON" -c 'import nvidia.cudnn; print(list(nvidia.cudnn.__path__)[0])' 2>/dev/null)
# CUDA 13 takes a cudaMemLocation where llm.c (written for CUDA 12) passes a device number of -1 (the host)
if nvcc --version | grep -q "release 1[3-9]"; then
  sed -i 's/cudaMemAdviseSetPreferredLocation, cudaCpuDeviceId)/cudaMemAdviseSetPreferredLocation, cudaMemLocation{cudaMemLocationTypeHost, 0})/' \
    "$LLMC_DIR/llmc/cuda_utils.cuh"
fi
if [ -n "$cudnn" ] && [ -d "$LLMC_DIR/cudnn-frontend/include" ]; then  # nvcc finds headers and libraries here
  mkdir -p /tmp/cudnn_lib && ln -sf "$cudnn"/lib/libcudnn.so.* /tmp/cudnn_lib/ && ln -sf "$(ls "$cudnn"/lib/libcudnn.so.* | head -1)" /tmp/cudnn_lib/libcudnn.so
  export CPATH="$cudnn/include" LIBRARY_PATH=/tmp/cudnn_lib LD_LIBRARY_PATH="$cudnn/lib:${LD_LIBRARY_PATH:-}"
  (cd "$LLMC_DIR" && make train_gpt2cu USE_CUDNN=1 CUDNN_FRONTEND_PATH=cudnn-frontend/include NO_MULTI_GPU=1 NO_USE_MPI=1 \
    NVCC_LDLIBS="-lnvrtc -lcuda") \
    > "$OUT/llmc_build.log" 2>&1 && echo "llm.c built with cuDNN" | tee -a "$OUT/llmc_build.log"
fi
if [ ! -x "$LLMC_DIR/train_gpt2cu" ]; then
  (cd "$LLMC_DIR" && make train_gpt2cu NO_MULTI_GPU=1 NO_USE_MPI=1) >> "$OUT/llmc_build.log" 2>&1 &&
    echo "llm.c built WITHOUT cuDNN" | tee -a "$OUT/llmc_build.log" || { tail -30 "$OUT/llmc_build.log"; exit 1; }
fi

mkdir -p /tmp/llmc_run
# llmc_d12 NAME FLAGS...: llm.c's d12 run of its 124M script's shape, its console in $OUT/NAME.log
llmc_d12() {
  local name=$1; shift
  (cd "$LLMC_DIR" && timeout 300 ./train_gpt2cu -i "$DATA/random_train_*.bin" -j "$DATA/random_val_*.bin" -o /tmp/llmc_run \
    -e d12 -b 64 -t 1024 -d 524288 -x 30 -v 1000 -s 0 -h 0 -z 1 -r 0 -l 0.0006 "$@") > "$OUT/$name.log" 2>&1
}
llmc_d12 llmc_d12
# llm.c's GELU fusion is off by default (-ge 0); ds_train's -ge 2 default fuses, so llm.c runs once more with it
llmc_d12 llmc_d12_ge2 -ge 2
timeout 400 "$PYTHON" ds_train/main.py --ds_config ds_configs/gpt2_124M.json -e d12 -b 64 -t 1024 -d 524288 -z 1 -r 0 \
  -x 20 -i "$DATA/random_train_*.bin" -j "$DATA/random_val_*.bin" -v 100000 -m 1 -s 0 > "$OUT/ds_train_d12.log" 2>&1

"$PYTHON" - "$OUT/llmc_d12.log" "$OUT/llmc_d12_ge2.log" "$OUT/ds_train_d12.log" <<'PY'
import re, statistics, sys
sys.path.insert(0, "bench")
from summarize import summarize
ours = summarize(sys.argv[3], 6, 20)
if "note" in ours:
    sys.exit(f"missing step lines: ds_train {ours['note']}")
b = ours["ms"]
print(f"ds_train:                 {b:.1f} ms/step, {524288 / b * 1000:,.0f} tokens/s (steps 6-20, MFU {ours['mfu']:.1f}%, "
      f"peak {ours['peak_gib']} GiB)")
for name, log in (("llm.c train_gpt2cu", sys.argv[1]), ("llm.c train_gpt2cu -ge 2", sys.argv[2])):
    llmc = [float(m.group(2)) for m in re.finditer(r"^step\s+(\d+)/\d+ \|.*?\| ([\d.]+) ms", open(log).read(), re.M)
            if 11 <= int(m.group(1)) <= 30]
    if not llmc:
        print(f"{name}: no step lines in {log}")
        continue
    a = statistics.mean(llmc)
    print(f"{name:25} {a:.1f} ms/step, {524288 / a * 1000:,.0f} tokens/s (steps 11-30); ds_train / it: {a / b:.3f}")
PY
