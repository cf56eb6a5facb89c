"""The blocks' bias gradients, column sums of a (B*T, N) bf16 gradient, in the ways a step could take them.

In d48's step on an H100 (bench/results/h100_2026-12-05_lease10/profile_d48.txt) Inductor's kernels for these sums
took about 80 ms of 2498, the first MLP linear's alone 41.5 ms (0.108 ms a call for a 16384 x 6400 gradient, where
the H100's 3.35 TB/s read it in 0.063). This times, for each bias of a block at d12, d24 and d48's micro-batches:
- `compiled`: torch.compile(g.sum(0)), the kernel Inductor makes for a sum whose input comes from an op it cannot
  see into, as the first MLP linear's and c_attn's bias gradients do in the trainer (after GELU's fused backward
  and attention's); the projections' two took about 0.02 ms a call there, reduced along with other work;
- `eager`: PyTorch's own reduction;
- `gemv`: ones @ g in bf16, cuBLAS's matrix-vector product;
- `shipped`: ds_train.gelu_fusion.column_sum, what the trainer takes for the first MLP linear's bias at -ge 2: the
  same product with an fp32 output (so fp32 sums whatever cuBLAS's reduction precision), then rounded to bf16;
- `split`: a Triton kernel that sums a slice of rows for a block of columns in each program, then a second that adds
  the slices' fp32 partials (deterministic: no atomics);
- `read`: g.sum(), one read of g and nothing written, about the floor for any of them.
Each input rotates through 4 buffers so that L2 holds none of it. Prints ms per call and the step's total over its
layers and micro-steps, and the largest difference from a float64 sum (bf16's rounding: about 2^-9 of the value).

    python bench/bias_grad.py [--sizes d12 d24 d48]
"""

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from ds_train.gelu_fusion import column_sum  # noqa: E402

# (layers, channels, micro-batch rows B*T, micro-steps per 0.5M-token step; d48 at llm.c's B=16, 131K tokens: 8)
SIZES = {"d12": (12, 768, 64 * 1024, 8), "d24": (24, 1024, 64 * 1024, 8), "d48": (48, 1600, 16 * 1024, 8)}


@triton.jit
def column_partials(g_ptr, partial_ptr, rows, cols, rows_per_split, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """partial[split, c] = sum of g[r, c] over the split's rows, in fp32."""
    col_block, split = tl.program_id(0), tl.program_id(1)
    c = col_block * BLOCK_C + tl.arange(0, BLOCK_C)
    start = split * rows_per_split
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    for r0 in range(start, tl.minimum(start + rows_per_split, rows), BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        mask = (r[:, None] < tl.minimum(start + rows_per_split, rows)) & (c[None, :] < cols)
        acc += tl.load(g_ptr + r[:, None].to(tl.int64) * cols + c[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(partial_ptr + split * cols + c, tl.sum(acc, axis=0), mask=c < cols)


@triton.jit
def sum_partials(partial_ptr, out_ptr, splits, cols, BLOCK_C: tl.constexpr):
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for s in range(0, splits):
        acc += tl.load(partial_ptr + s * cols + c, mask=c < cols, other=0.0)
    tl.store(out_ptr + c, acc.to(out_ptr.dtype.element_ty), mask=c < cols)


def split_sum(g: torch.Tensor, block_r: int = 32, block_c: int = 128, warps: int = 4) -> torch.Tensor:
    rows, cols = g.shape
    col_blocks = triton.cdiv(cols, block_c)
    # about 8 programs an SM
    splits = max(1, min(rows // block_r, 8 * torch.cuda.get_device_properties(g.device).multi_processor_count
                        // col_blocks))
    rows_per_split = triton.cdiv(triton.cdiv(rows, splits), block_r) * block_r
    splits = triton.cdiv(rows, rows_per_split)
    partial = torch.empty(splits, cols, device=g.device, dtype=torch.float32)
    column_partials[(col_blocks, splits)](g, partial, rows, cols, rows_per_split, BLOCK_R=block_r, BLOCK_C=block_c,
                                          num_warps=warps)
    out = torch.empty(cols, device=g.device, dtype=g.dtype)
    sum_partials[(triton.cdiv(cols, 256),)](partial, out, splits, cols, BLOCK_C=256)
    return out


@functools.cache
def sleep_cycles_per_ms() -> float:
    """The GPU clock's cycles per millisecond, as torch.cuda._sleep counts them (timed, so that a boost clock
    or a power-capped one is what is counted)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(1_000_000)  # the first call ramps the clock
    start.record()
    torch.cuda._sleep(10_000_000)
    end.record()
    torch.cuda.synchronize()
    return 10_000_000 / start.elapsed_time(end)


def time_ms(fn, inputs, repeat=50) -> float:
    """GPU time per call. The calls are queued behind a GPU sleep as long as twice the host's time to queue them,
    so that the timed window holds the kernels back to back. Timed as they were queued, a way made of several ops
    or a compiled function's guards (tens of microseconds of Python a call) measured the host, not the GPU, on a
    slower host, since these kernels take 0.02-0.2 ms."""
    for g in inputs:
        fn(g)
    torch.cuda.synchronize()
    host = time.perf_counter()
    for i in range(repeat):
        fn(inputs[i % len(inputs)])
    host_ms = (time.perf_counter() - host) * 1e3
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(int(2 * host_ms * sleep_cycles_per_ms()) + 1)
    start.record()
    for i in range(repeat):
        fn(inputs[i % len(inputs)])
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeat


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    args = parser.parse_args()
    torch.manual_seed(0)
    compiled = torch.compile(lambda g: g.sum(0), dynamic=False)
    ways = {"compiled": compiled, "eager": lambda g: g.sum(0),
            "gemv": lambda g: torch.ones(1, g.shape[0], device=g.device, dtype=g.dtype).mm(g).view(-1),
            "shipped": column_sum, "split": split_sum, "read": lambda g: g.sum()}
    # the split kernel's shapes, tried on each input: (block rows, block columns, warps)
    split_shapes = [(32, 128, 4), (64, 128, 8), (16, 256, 4), (32, 256, 8), (64, 64, 4)]
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__}")
    header = "".join(f"{w:>10}" for w in ways)
    print(f"{'size':5} {'bias':7} {'rows x cols':>14} {header}  best split (rows, cols, warps)  "
          "max error (compiled, gemv, shipped, split)")
    for size in args.sizes:
        layers, C, rows, accum = SIZES[size]
        totals = dict.fromkeys(ways, 0.0)
        for bias, cols in (("c_attn", 3 * C), ("attn_pj", C), ("c_fc", 4 * C), ("mlp_pj", C)):
            inputs = [torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16) for _ in range(4)]
            times = {w: time_ms(fn, inputs) for w, fn in ways.items() if w != "split"}  # split: its best shape
            shape_times = {s: time_ms(lambda g, s=s: split_sum(g, *s), inputs) for s in split_shapes}
            best = min(shape_times, key=shape_times.get)
            times["split"] = shape_times[best]
            exact = inputs[0].double().sum(0)
            scale = exact.abs().max().item()
            errors = [((fn(inputs[0]).double() - exact).abs().max().item() / scale)
                      for fn in (compiled, ways["gemv"], column_sum, lambda g: split_sum(g, *best))]
            for w in ways:
                totals[w] += times[w] * layers * accum
            cells = "".join(f"{times[w]:10.4f}" for w in ways)
            print(f"{size:5} {bias:7} {f'{rows}x{cols}':>14} {cells}  {str(best):30} "
                  + ", ".join(f"{e:.1e}" for e in errors))
            del inputs
        cells = "".join(f"{totals[w]:10.1f}" for w in ways)
        print(f"{size:5} {'step ms':7} {'':>14} {cells}  (x {layers} layers x {accum} micro-steps)")


if __name__ == "__main__":
    main()
