"""The MLP's GELU matmuls three ways, for the shapes of d12, d24 and d48 at their scripts' micro-batches: unfused
(a cuBLAS matmul, then inductor's GELU kernel), ds_train's cuBLASLt epilogues (-ge 2, ds_train/gelu_fusion.py)
and quack's CuTe DSL GEMMs with a GELU epilogue (`quack-kernels`, which flash-attn-4 installs: gemm_act
forward, gemm_dact backward, with their default config and autotuned). With --plain, also d12's linears
without GELU (forward, input and weight gradients) with cuBLAS and with quack's autotuned gemm. Prints the median
ms, TFLOP/s, the first call's seconds (quack compiles, and tunes, then) and the error against the unfused
result relative to its largest value.
    python bench/mlp_kernels.py [--plain]    (a CUDA GPU of compute capability 9.0+, quack-kernels installed;
                                              --plain adds d12's plain matmuls, each autotuned by quack)
"""

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ds_train import gelu_fusion  # noqa: E402
from gelu_epilogue import mlp_tensors, rel_err, timed, unfused_forward  # noqa: E402  (bench/, the script's own folder)

SHAPES = {"d12 B=64": (64 * 1024, 768), "d24 B=64": (64 * 1024, 1024), "d48 B=16": (16 * 1024, 1600)}
GELU = "gelu_tanh_approx"


@torch.compile
def unfused_dgelu(grad_y, w_proj, pre):
    return torch.ops.aten.gelu_backward(grad_y @ w_proj, pre, approximate="tanh")


def first_and_median(fn):
    """(seconds of the first call, median ms of the later ones)."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0, timed(fn)


def print_header():
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | bf16")
    print(f"{'shape':10} {'part':34} {'first s':>8} {'ms':>8} {'TFLOP/s':>8} {'rel err':>9}")


def shape_cases(gen):
    """For each of SHAPES: (name, M, C, the MLP's tensors (x, w_fc, b_fc, w_proj, grad_y), the unfused results
    (GELU's output, its input, the gradient at its input))."""
    for name, (M, C) in SHAPES.items():
        x, w_fc, b_fc, w_proj, grad_y = mlp_tensors(M, C, gen)
        out_ref, pre_ref = unfused_forward(x, w_fc, b_fc)
        yield name, M, C, (x, w_fc, b_fc, w_proj, grad_y), (out_ref, pre_ref, unfused_dgelu(grad_y, w_proj, pre_ref))


def print_row(shape, part, fn, check, flops):
    """One line: fn's first call in seconds, its median ms and TFLOP/s, and the largest relative error of the
    (result, reference) pairs that check(fn()) lists (check None: no reference)."""
    try:
        first, ms = first_and_median(fn)
        err = max(rel_err(a, b) for a, b in check(fn())) if check else float("nan")
    except Exception as e:  # a config or layout the kernel does not take: say so, go on
        print(f"{shape:10} {part:34} failed: {(str(e).strip().splitlines() or [type(e).__name__])[0][:150]}")
        return
    print(f"{shape:10} {part:34} {first:8.2f} {ms:8.3f} {flops / ms / 1e9:8.0f} {err:9.2e}", flush=True)


def main():
    from quack.gemm_interface import gemm, gemm_act, gemm_dact
    plain = "--plain" in sys.argv[1:]
    sys.argv = sys.argv[:1]  # the CuTe DSL parses the command line (ds_train/flash_attention.py says why)
    ext = gelu_fusion.extension()
    print_header()
    gen = torch.Generator(device="cuda").manual_seed(0)
    for name, M, C, (x, w_fc, b_fc, w_proj, grad_y), (out_ref, pre_ref, dpre_ref) in shape_cases(gen):
        flops = 2 * M * C * 4 * C

        def row(part, fn, check=None, flops=flops):
            print_row(name, part, fn, check, flops)

        fwd_check = lambda res: [(res[0], out_ref), (res[1], pre_ref)]  # (gelu output, its input)
        row("fwd unfused (cuBLAS + inductor)", lambda: unfused_forward(x, w_fc, b_fc), fwd_check)
        row("fwd cuBLASLt GELU_AUX_BIAS", lambda: ext.linear_gelu(x, w_fc, b_fc), fwd_check)
        for tuned in (False, True):
            row(f"fwd quack gemm_act tuned={int(tuned)}",
                lambda: gemm_act(x, w_fc.T, bias=b_fc, activation=GELU, tuned=tuned)[::-1], fwd_check)
        bwd_check = lambda res: [(res[0], dpre_ref)]
        row("bwd unfused (cuBLAS + inductor)", lambda: (unfused_dgelu(grad_y, w_proj, pre_ref),), bwd_check)
        row("bwd cuBLASLt DGELU", lambda: ext.matmul_gelu_backward(grad_y, w_proj, pre_ref, False), bwd_check)
        for tuned in (False, True):  # gemm_dact also writes gelu(pre) again, which backward needs for w_proj
            row(f"bwd quack gemm_dact tuned={int(tuned)}",
                lambda: gemm_dact(grad_y, w_proj, pre_ref, activation=GELU, tuned=tuned), bwd_check)
        if not plain or not name.startswith("d12"):
            continue
        # every linear of d12's block, plain: (what, A, B) for A @ B, cuBLAS against quack's autotuned gemm
        qkv_w = (torch.randn(3 * C, C, device="cuda", generator=gen) * 0.02).bfloat16()
        dqkv = torch.randn(M, 3 * C, device="cuda", generator=gen).bfloat16()
        for what, a, b in [("c_attn fwd", x, qkv_w.T), ("c_attn dx", dqkv, qkv_w), ("c_attn dW", dqkv.T, x),
                           ("c_fc fwd", x, w_fc.T), ("c_fc dW", dpre_ref.T, x),
                           ("c_proj fwd", out_ref, w_proj.T), ("c_proj dW", grad_y.T, out_ref)]:
            ref = a @ b
            row(f"{what} cuBLAS", lambda: a @ b, flops=2 * a.shape[0] * a.shape[1] * b.shape[1])
            row(f"{what} quack", lambda: gemm(a, b, tuned=True), lambda res: [(res, ref)],
                flops=2 * a.shape[0] * a.shape[1] * b.shape[1])


if __name__ == "__main__":
    main()
