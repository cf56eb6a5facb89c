"""GELU in cuBLASLt's matmul epilogues (ds_train/csrc/gelu_matmul.cpp) against what the trainer does without
them (a cuBLAS matmul, then inductor's fused GELU kernel), for the MLP shapes of d12, d24 and d48 at their
micro-batches. Prints the error of the fused results against the unfused ones and the time of each side.
The unfused forward compiled alone here ran slower than inside the trainer's compiled block (0.85 against
0.63 ms for d12 on an H100), so the forward's saving here overstates the trainer's: `bench/profile_step.py`
and the A/B runs of `bench/throughput.sh gelu` are the judges.
    python bench/gelu_epilogue.py            (a CUDA GPU; builds the extension on first use)
"""

import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ds_train import gelu_fusion  # noqa: E402

SHAPES = {"d12 B=64": (64 * 1024, 768), "d24 B=32": (32 * 1024, 1024), "d48 B=16": (16 * 1024, 1600)}


def timed(fn, reps=30):
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


@torch.compile
def unfused_forward(x, w, b):
    pre = F.linear(x, w, b)
    return F.gelu(pre, approximate="tanh"), pre


@torch.compile
def unfused_backward(grad_out, w, pre):  # what autograd runs for gelu(pre) @ w.T: the input gradient and bias sum
    grad = torch.ops.aten.gelu_backward(grad_out @ w, pre, approximate="tanh")
    return grad, grad.sum(0)


@torch.compile
def bias_sum(grad):
    return grad.sum(0)


def mlp_tensors(M, C, gen):
    """An MLP's bf16 operands for M rows of width C: (x, w_fc, b_fc, w_proj, the gradient at its output)."""
    x = torch.randn(M, C, device="cuda", generator=gen).bfloat16()
    w_fc = (torch.randn(4 * C, C, device="cuda", generator=gen) * 0.02).bfloat16()
    b_fc = (torch.randn(4 * C, device="cuda", generator=gen) * 0.02).bfloat16()
    w_proj = (torch.randn(C, 4 * C, device="cuda", generator=gen) * 0.02).bfloat16()
    grad_y = torch.randn(M, C, device="cuda", generator=gen).bfloat16()
    return x, w_fc, b_fc, w_proj, grad_y


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def main():
    t0 = time.time()
    ext = gelu_fusion.extension()
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | extension built or loaded in {time.time() - t0:.1f} s")
    print(f"{'shape':10} {'part':28} {'unfused ms':>10} {'fused ms':>9} {'saved':>7} {'max rel err':>11}")
    gen = torch.Generator(device="cuda").manual_seed(0)
    for name, (M, C) in SHAPES.items():
        x, w_fc, b_fc, w_proj, grad_y = mlp_tensors(M, C, gen)

        out_ref, pre_ref = unfused_forward(x, w_fc, b_fc)
        out, pre = ext.linear_gelu(x, w_fc, b_fc)
        rows = [("forward: linear + GELU", timed(lambda: unfused_forward(x, w_fc, b_fc)),
                 timed(lambda: ext.linear_gelu(x, w_fc, b_fc)), max(rel_err(out, out_ref), rel_err(pre, pre_ref)))]
        grad_ref, bias_ref = unfused_backward(grad_y, w_proj, pre_ref)
        grad, bias = ext.matmul_gelu_backward(grad_y, w_proj, pre_ref, True)
        grad2, = ext.matmul_gelu_backward(grad_y, w_proj, pre_ref, False)
        t_ref = timed(lambda: unfused_backward(grad_y, w_proj, pre_ref))
        rows.append(("backward: DGELU_BGRAD", t_ref, timed(lambda: ext.matmul_gelu_backward(grad_y, w_proj, pre_ref, True)),
                     max(rel_err(grad, grad_ref), rel_err(bias, bias_ref))))
        rows.append(("backward: DGELU + sum", t_ref,
                     timed(lambda: bias_sum(ext.matmul_gelu_backward(grad_y, w_proj, pre_ref, False)[0])),
                     max(rel_err(grad2, grad_ref), rel_err(bias_sum(grad2), bias_ref))))
        rows.append(("  (plain matmul, for scale)", timed(lambda: grad_y @ w_proj), float("nan"), float("nan")))
        for part, ref_ms, fused_ms, err in rows:
            print(f"{name:10} {part:28} {ref_ms:10.3f} {fused_ms:9.3f} {ref_ms - fused_ms:7.3f} {err:11.2e}")


if __name__ == "__main__":
    main()
