#!/bin/bash
# What issue 7 still owes, in one job on one GPU box, most decisive first; a job cut short still leaves every
# part it finished, each with a PART.done marker in $OUT (default bench_out/owed):
#   bash bench/owed.sh BASE_TREE [PART...]
# BASE_TREE is the code before the last change to the step, gelu_fusion.column_sum (2026-12-06; before it,
# ds_train/weight_grad.py, c0c1451):
#   mkdir .base && git archive 5a94f21 ds_train ds_configs | tar -x -C .base    (the runs need no more of it)
# Parts (all by default, in this order; about 40 minutes on an H200 with the extensions to build, scaling aside):
#   tests     every test that skips without a GPU (18 on CPU), in the files that hold them, with the extensions
#             built first, on 4 pytest workers (2026-12-06 on an H100: 85 passed, none skipped)
#   gemm_algos  bench/gemm_algos.py: each of d24's and d48's matmuls (GEMM_MODELS="d24 d48 d12" adds d12's, whose
#             goal is met) against every algorithm cuBLASLt offers for it, at the power cap (2026-12-07 on an H100:
#             the heuristic's first quickest for the GELU matmuls, 1.6-1.8% of the matmul time at most to gain by any
#             choice, and torch's cuBLASLt switch no quicker; bench/results/h100_2026-12-07_gemm_algos/)
#   gemm_ab   for d24 and d48, where gemm_algos' `choice` line names a setting (TORCH_BLAS_PREFER_CUBLASLT=1, torch's
#             switch to cuBLASLt), the trainer with it against without, alternating twice (bench/ab_trees.sh . with
#             NEW_ENV); on 2026-12-07's H100 there was none to try
#   ab_d12    d12 B=64 x 8 at ZeRO-1 against BASE_TREE, alternating twice (AB_ROUNDS=N: N times; bench/ab_trees.sh)
#   ab_d24    d24 B=64 x 8 likewise, alternating twice (2026-12-05 on an H100: no difference, 2381.1 against 2382.8 ms;
#             once each on an H200 the same day: the new tree 0.8% slower, run second at a 2% lower sampled clock)
#   ab_d48    d48 B=16 x 8 likewise, alternating twice: the size that gelu_fusion.column_sum is for (2026-12-06 on two
#             H100s: 0.24% faster in one round, 0.32% by the medians of three)
#   bias_grad bench/bias_grad.py: the blocks' bias-gradient sums, Inductor's kernels against cuBLAS and Triton
#   profiles  one step of d48 B=16 x 8 and of d24 B=64 x 8 under torch.profiler (bench/profile_step.py): where
#             d24's 1.17-1.20x llm.c loses against d12's 1.23-1.27x (2026-12-05 on an H200 and on an H100: the
#             matmuls as long on both, the H100's memory-bound kernels 1.1-1.5x longer)
#   r3        the peaks at -r 3 that tests/test_autofit.py holds the estimate to (d48 B=16, d24 B=32, one
#             micro-step; 2026-12-05: 29.83 and 8.79 GiB, and ds_train/memory.py no longer counts the bf16
#             weight gradients that weight_grad stopped making)
#   eval      d12 with val loss, HellaSwag and a sample every 5 steps (bench/throughput.sh eval): the val loss no
#             longer computes the head's gradients (2026-12-05), so its cost again
#   zero3     d12 B=64 x 8 at ZeRO-1 and ZeRO-3 alternating three times: ZeRO-3's cost since a step waits for the
#             GPU once (4.8-19.1% before, on different hosts; +26-30% and +6.9-8.4% on two hosts on 2026-12-05)
#   zero3_profile  one step of d12 B=64 x 8 at ZeRO-3 under torch.profiler and under cProfile (bench/profile_step.py
#             --python_profile): where the host's time goes (2026-12-05 on an H200: the host 98% busy, the GPU
#             waiting for it; late that day on an H100, with a sound cProfile listing: the host waiting 312 ms a step)
#   zero3_fa  d12 B=64 x 8 at ZeRO-1 and ZeRO-3, each with SDPA (-fa 0) and FlashAttention-4 (-fa 1), the four
#             alternating twice on one host (needs the FlashAttention-4 bundle): ZeRO-3 cost +14.8-18.1% with -fa 1 on
#             the ninth lease's host and +6.1-6.6% with SDPA on the eleventh's; which of the two made the difference
#             (2026-12-06 on an H100 of the eleventh's class: +5.1-5.9% with either, so the host)
#   h100      on an H100 only (the GPU of the issue's targets; until 2026-12-05 the current code's d12 and d24 had
#             run beside llm.c on H200s only): bench/llmc_side_by_side.sh d12 d24_b64 d12_b128 with LLMC_DIR=.llmc
#             (carry it), then d48 B=16 x 8 at ZeRO-1, the table's row for the 55% MFU goal (2026-12-05: d12 1.26x
#             and 1.28x beside llm.c, 1.30x and 1.32x its figure in the issue; d24 1.19x and 1.21x; d48 51.6% MFU)
#   scaling   bench/scaling.sh, where there is more than one GPU (16 runs on 8 GPUs, about half an hour: on a
#             machine with several GPUs run `bash bench/owed.sh BASE_TREE scaling` first, the one part only it can do)
# Then the results go in bench/results/<gpu>_<date>_<what>/ with a NOTES.md, and the figures in docs/performance.md
# and the README. On the lent machine: bench/README.md, "A detached job on the lent machine".
set -u -o pipefail
cd "$(dirname "$0")/.."
[ -d "${1:-}" ] || { echo "owed.sh: BASE_TREE: expected the folder of the code to compare with (got '${1:-}')" >&2; exit 2; }
base=$(cd "$1" && pwd)
shift
all_parts="tests gemm_algos gemm_ab ab_d12 ab_d24 ab_d48 bias_grad profiles r3 eval zero3 zero3_profile zero3_fa h100 scaling"
parts=${*:-$all_parts}
for part in $parts; do
  [[ " $all_parts " == *" $part "* ]] || { echo "owed.sh: unknown part '$part' (expected some of: $all_parts)" >&2; exit 2; }
done
OUT=${OUT:-bench_out/owed}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
source bench/device_env.sh
random_shards || exit 1
# bench/ab_trees.sh builds each tree's extensions in its own folder under the root; this tree's folder serves every
# part, so the tests part builds them once for the A/B's runs too
extensions=$TORCH_EXTENSIONS_DIR
export TORCH_EXTENSIONS_DIR=$extensions/new
rounds=${AB_ROUNDS:-2}  # of each A/B
D12=(--ds_config ds_configs/gpt2_124M.json -e d12 -b 64 -t 1024 -d 524288)
D24=(--ds_config ds_configs/gpt2_350M.json -e d24 -b 64 -t 1024 -d 524288)
D48=(--ds_config ds_configs/gpt2_1558M.json -e d48 -b 16 -t 1024 -d 131072)

for part in $parts; do
  echo "=== owed.sh: $part ($(date +%T))" >&2
  case $part in
    tests)
      "$PYTHON" -c "
from ds_train import main; main._cuda_arch_list_for_deepspeed()  # as a run does: DeepSpeed cannot parse '9.0a'
from deepspeed.ops.op_builder import FusedAdamBuilder; FusedAdamBuilder().load()
from ds_train import gelu_fusion, loss; gelu_fusion.extension(); loss.softmax_grad_extension()
print('extensions built')" > "$OUT/prebuild.log" 2>&1
      timeout 420 "$PYTHON" -m pytest -q -rs -p no:cacheprovider -n 4 \
        tests/test_weight_grad.py tests/test_grad_fold.py tests/test_loss.py tests/test_model.py \
        tests/test_inductor_choices.py \
        tests/test_training.py::test_bf16_gradient_fold_in_one_kernel_equals_deepspeeds \
        tests/test_training.py::test_ds_accelerator_cpu_keeps_launched_ranks_on_the_cpu_of_a_gpu_machine \
        tests/test_training.py::test_a_one_gpu_run_keeps_torchs_and_deepspeeds_chatter_out_of_its_log \
        tests/test_training.py::test_a_micro_batch_too_big_for_the_gpu_is_one_line_that_says_what_to_change \
        > "$OUT/pytest_gpu.txt" 2>&1 ;;
    ab_d12) TORCH_EXTENSIONS_DIR=$extensions OUT=$OUT bash bench/ab_trees.sh "$base" d12_z1 "$rounds" 16 "${D12[@]}" -z 1 ;;
    ab_d24) TORCH_EXTENSIONS_DIR=$extensions OUT=$OUT bash bench/ab_trees.sh "$base" d24_z1 "$rounds" 12 "${D24[@]}" -z 1 ;;
    ab_d48) TORCH_EXTENSIONS_DIR=$extensions OUT=$OUT bash bench/ab_trees.sh "$base" d48_z1 "$rounds" 10 "${D48[@]}" -z 1 ;;
    gemm_algos) "$PYTHON" bench/gemm_algos.py --models ${GEMM_MODELS:-d24 d48} > "$OUT/gemm_algos.txt" 2>&1 ;;
    gemm_ab)
      for model in d24 d48; do
        settings=$(sed -n "s/^choice $model: \(.*\) | .*/\1/p" "$OUT/gemm_algos.txt" 2>/dev/null)
        if [ -z "$settings" ] || [ "$settings" = none ]; then
          echo "owed.sh: gemm_ab: no choice for $model in $OUT/gemm_algos.txt (${settings:-no such line})" >&2
          continue
        fi
        flags=("${D24[@]}") steps=12
        [ $model = d48 ] && flags=("${D48[@]}") steps=10
        # this tree's extensions folder, where the tests part built them
        NEW_ENV=$settings OUT=$OUT bash bench/ab_trees.sh . "gemm_$model" "$rounds" "$steps" "${flags[@]}" -z 1
      done ;;
    bias_grad) "$PYTHON" bench/bias_grad.py > "$OUT/bias_grad.txt" 2>&1 ;;
    profiles)
      for run in d48 d24; do
        flags=("${D48[@]}"); [ $run = d24 ] && flags=("${D24[@]}")
        timeout 400 "$PYTHON" bench/profile_step.py "${flags[@]}" -z 1 -r 0 \
          -i "$DATA/random_train_*.bin" -j "$DATA/random_val_*.bin" > "$OUT/profile_$run.txt" 2>&1
      done ;;
    r3) OUT=$OUT/r3 bash bench/memory.sh r3 ;;
    eval) OUT=$OUT/eval bash bench/throughput.sh eval ;;
    zero3)
      mkdir -p "$OUT/zero3"
      for i in 1 2 3; do
        for z in 1 3; do
          OUT=$OUT/zero3 train_run "d12_zero${z}_$i" 16 "${D12[@]}" -z $z
        done
      done
      "$PYTHON" bench/summarize.py "$OUT"/zero3/d12_zero*.log --first 4 --last 16 | tee "$OUT/zero3/summary.txt" ;;
    zero3_profile)
      for how in kernels python; do
        extra=(); [ $how = python ] && extra=(--python_profile 25)
        timeout 300 "$PYTHON" bench/profile_step.py "${D12[@]}" -z 3 -r 0 "${extra[@]}" \
          -i "$DATA/random_train_*.bin" -j "$DATA/random_val_*.bin" > "$OUT/profile_d12_z3_$how.txt" 2>&1
      done ;;
    zero3_fa)
      mkdir -p "$OUT/zero3_fa"
      for i in 1 2; do
        for fa in 0 1; do
          for z in 1 3; do
            OUT=$OUT/zero3_fa train_run "d12_zero${z}_fa${fa}_$i" 16 "${D12[@]}" -z $z -fa $fa
          done
        done
      done
      "$PYTHON" bench/summarize.py "$OUT"/zero3_fa/d12_zero*.log --first 4 --last 16 | tee "$OUT/zero3_fa/summary.txt" ;;
    h100)
      if nvidia-smi -L 2>/dev/null | grep -q H100; then
        LLMC_DIR=${LLMC_DIR:-.llmc} OUT=$OUT/h100 bash bench/llmc_side_by_side.sh d12 d24_b64 d12_b128
        OUT=$OUT/h100 train_run d48_zero1 10 "${D48[@]}" -z 1
        "$PYTHON" bench/summarize.py "$OUT"/h100/d48_zero1.log --first 4 --last 10 | tee "$OUT/h100/d48.txt"
      else
        echo "owed.sh: h100: not an H100 here, left for one" >&2; continue
      fi ;;
    scaling)
      if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -gt 1 ]; then
        OUT=$OUT/scaling bash bench/scaling.sh
      else
        echo "owed.sh: scaling: one GPU here, left for a machine with several" >&2; continue
      fi ;;
  esac
  touch "$OUT/$part.done"
done
touch "$OUT/all.done"
