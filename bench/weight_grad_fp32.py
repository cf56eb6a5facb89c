"""A block's weight gradients added into their fp32 accumulators by cuBLAS itself, against what the trainer does:
each weight gradient as a bf16 matmul, then one pass that adds it into DeepSpeed's fp32 accumulator (at the end
of each micro-step, `ds_train/grad_fold.py`).

For each of a block's four linears (c_attn, attn c_proj, c_fc, mlp c_proj) at the micro-batches of d12 (B=64),
d24 (B=64) and d48 (B=16), T=1024, it times on the GPU (torch.profiler, all kernels of a call):
- bf16: grad = dy.T @ x in bf16, then acc += grad (fp32 += bf16, the fold's arithmetic for that one tensor);
- fp32 beta=1: torch.addmm(acc, dy.T, x, out_dtype=float32, out=acc), the head's weight gradient's way.
and prints each one's ms, the saving per block and per optimizer step (n_layer blocks, 8 micro-steps), and the
largest difference between the two accumulators relative to their largest value (the bf16 path rounds each
micro-step's gradient to bf16 first, so they are not the same bits). This is the measurement that decides
whether the linears' backward should find DeepSpeed's fp32 buffers (docs/performance.md, "Where the rest might
come from").
    python bench/weight_grad_fp32.py      (a CUDA GPU)
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ds_train.model import config_from_descriptor  # noqa: E402
from attention_tiles import kernel_ms  # noqa: E402  (bench/, the script's own folder)

SHAPES = [("d12", 64), ("d24", 64), ("d48", 16)]  # model, micro-batch
T, MICRO_STEPS, ROUNDS = 1024, 8, 5


def main():
    if not torch.cuda.is_available():
        sys.exit("bench/weight_grad_fp32.py: needs a CUDA GPU (torch.addmm with out_dtype is CUDA-only)")
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | bf16 inputs, T={T}")
    print(f"{'shape':<12}{'linear':<14}{'out x in':>12}{'bf16 + fold ms':>16}{'fp32 beta=1 ms':>16}"
          f"{'saved ms':>10}{'max |diff| / max':>18}")
    for descriptor, B in SHAPES:
        cfg = config_from_descriptor(descriptor)
        C, rows = cfg.n_embd, B * T
        saved_per_block = 0.0
        for name, (out_features, in_features) in (("c_attn", (3 * C, C)), ("attn.c_proj", (C, C)),
                                                  ("c_fc", (4 * C, C)), ("mlp.c_proj", (C, 4 * C))):
            torch.manual_seed(0)
            dy = torch.randn(rows, out_features, device="cuda").bfloat16()
            x = torch.randn(rows, in_features, device="cuda").bfloat16()
            acc_bf16 = torch.zeros(out_features, in_features, device="cuda")
            acc_fp32 = torch.zeros_like(acc_bf16)

            def through_bf16():
                acc_bf16.add_(dy.t() @ x)

            def in_cublas():
                torch.addmm(acc_fp32, dy.t(), x, out_dtype=torch.float32, out=acc_fp32)

            through_bf16()
            in_cublas()
            diff = ((acc_bf16 - acc_fp32).abs().max() / acc_fp32.abs().max()).item()
            times = {fn: [] for fn in (through_bf16, in_cublas)}
            for _ in range(ROUNDS):  # interleaved, so that clock drift falls on both alike
                for fn in times:
                    times[fn].append(kernel_ms(fn, reps=10))
            ms_bf16, ms_fp32 = (sorted(times[fn])[ROUNDS // 2] for fn in (through_bf16, in_cublas))
            saved_per_block += ms_bf16 - ms_fp32
            print(f"{descriptor} B={B:<6}{name:<14}{f'{out_features}x{in_features}':>12}{ms_bf16:>16.3f}"
                  f"{ms_fp32:>16.3f}{ms_bf16 - ms_fp32:>10.3f}{diff:>18.2e}")
        print(f"{descriptor} B={B:<6}saved per block {saved_per_block:.3f} ms, per step of {cfg.n_layer} blocks x "
              f"{MICRO_STEPS} micro-steps {saved_per_block * cfg.n_layer * MICRO_STEPS:.1f} ms")


if __name__ == "__main__":
    main()
