"""The loss's Triton softmax-gradient kernel on one chunk of d12's head (4096 x 50304 bf16 logits), against variants:
ds_train/loss.py's Triton kernel (two passes over each row, a program per row; since 2026-12-03 the trainer runs a
one-pass CUDA kernel where it fits, bench/softmax_onepass.py) at other block sizes, the same in a persistent grid of
a few programs per SM (fewer rows in flight, so that the second pass may read its row from L2), and a plain copy of
the chunk (one read and one write: the floor for any in-place kernel). One pass in Triton with the whole 50304-wide
row in registers ran 3x slower than the two-pass kernel (1.42 ms against 0.46; spills).

    python bench/softmax_variants.py [--rows 4096]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from ds_train import loss  # noqa: E402

V, WIDTH = 50257, 50304


@triton.jit
def two_pass(logits_ptr, targets_ptr, loss_ptr, rows, row_stride, vocab, width, scale, BLOCK: tl.constexpr,
             EVICT: tl.constexpr):
    """The shipped kernel's arithmetic in a persistent grid (each program takes rows pid, pid + grid, ...), so
    only grid rows are in flight and the second pass may find its row still in L2; EVICT hints that too."""
    offsets = tl.arange(0, BLOCK)
    for row in range(tl.program_id(0), rows, tl.num_programs(0)):
        ptr = logits_ptr + row.to(tl.int64) * row_stride
        running_max = float("-inf")
        running_sum = 0.0
        for start in range(0, vocab, BLOCK):
            cols = start + offsets
            if EVICT:
                z = tl.load(ptr + cols, mask=cols < vocab, other=float("-inf"), eviction_policy="evict_last")
            else:
                z = tl.load(ptr + cols, mask=cols < vocab, other=float("-inf"))
            z = z.to(tl.float32)
            new_max = tl.maximum(running_max, tl.max(z, axis=0))
            running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(z - new_max), axis=0)
            running_max = new_max
        lse = running_max + tl.log(running_sum)
        target = tl.load(targets_ptr + row)
        tl.store(loss_ptr + row, lse - tl.load(ptr + target).to(tl.float32))
        for start in range(0, width, BLOCK):
            cols = start + offsets
            if EVICT:
                z = tl.load(ptr + cols, mask=cols < vocab, other=float("-inf"), eviction_policy="evict_first")
            else:
                z = tl.load(ptr + cols, mask=cols < vocab, other=float("-inf"))
            grad = tl.exp(z.to(tl.float32) - lse)
            grad = tl.where(cols == target, grad - 1.0, grad) * scale
            tl.store(ptr + cols, grad.to(logits_ptr.dtype.element_ty), mask=cols < width)


def time_ms(fn, make_input, repeat=20):
    inputs = [make_input() for _ in range(repeat)]
    fn(make_input())
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for x in inputs:
        fn(x)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeat


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=4096)
    rows = p.parse_args().rows
    gen = torch.Generator(device="cuda").manual_seed(0)
    base = (torch.randn(rows, WIDTH, device="cuda", generator=gen) * 3).bfloat16()
    targets = torch.randint(0, V, (rows,), device="cuda", generator=gen)
    scale = 1.0 / 65536
    make = base.clone

    def shipped(block, warps):
        def run(x):
            out = torch.empty(rows, dtype=torch.float32, device="cuda")
            loss._softmax_grad_kernel()[(rows,)](x, targets, out, x.stride(0), V, WIDTH, scale, WRITE_GRAD=True,
                                                BLOCK=block, num_warps=warps)
            return out
        return run

    def persistent(block, warps, per_sm, evict):
        grid = min(rows, torch.cuda.get_device_properties(0).multi_processor_count * per_sm)

        def run(x):
            out = torch.empty(rows, dtype=torch.float32, device="cuda")
            two_pass[(grid,)](x, targets, out, rows, x.stride(0), V, WIDTH, scale, BLOCK=block, EVICT=evict,
                              num_warps=warps)
            return out
        return run

    ref_x = make()
    ref_loss = shipped(4096, 8)(ref_x)
    gbytes = base.numel() * 2 / 1e9
    copy_dst = torch.empty_like(base)
    print(f"chunk {rows} x {WIDTH} bf16 ({gbytes:.2f} GB); ms per call, GB/s counting one read and one write")
    print(f"{'variant':<34} {'ms':>7} {'GB/s':>7} {'max loss err':>12} {'max grad err':>12}")
    ms = time_ms(lambda x: copy_dst.copy_(x), make)
    print(f"{'copy (the floor)':<34} {ms:>7.3f} {2 * gbytes / ms * 1e3:>7.0f}")
    variants = {f"shipped BLOCK={b} warps={w}": shipped(b, w) for b, w in
                ((4096, 8), (8192, 16), (4096, 16), (8192, 32), (16384, 32))}
    for block, warps, per_sm, evict in ((8192, 16, 1, False), (8192, 16, 2, False), (8192, 16, 4, False),
                                        (8192, 16, 2, True), (8192, 16, 4, True), (8192, 32, 1, False),
                                        (8192, 32, 2, True), (4096, 8, 4, True), (4096, 8, 8, True)):
        variants[f"persistent {block}/{warps}w x{per_sm}/SM{' evict' if evict else ''}"] = \
            persistent(block, warps, per_sm, evict)
    for name, fn in variants.items():
        try:
            ms = time_ms(fn, make)
            x = make()
            out = fn(x)
            loss_err = float((out - ref_loss).abs().max())
            grad_err = float((x.float() - ref_x.float()).abs().max())
            print(f"{name:<34} {ms:>7.3f} {2 * gbytes / ms * 1e3:>7.0f} {loss_err:>12.2e} {grad_err:>12.2e}")
        except Exception as e:  # a variant that does not compile (registers) is reported, not fatal
            print(f"{name:<34} failed: {str(e).splitlines()[0][:90]}")

    # the attention's gradients: which strides cuDNN's backward gives q, k, v taken as views of one qkv output
    B, T, H, D = 8, 1024, 12, 64
    qkv = torch.randn(B, T, 3 * H * D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    q, k, v = qkv.view(B, T, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
    grads = {}
    for name, t in (("q", q), ("k", k), ("v", v)):
        t.register_hook(lambda g, name=name: grads.__setitem__(name, g))
    torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
    for name, g in grads.items():
        print(f"attention grad {name}: shape {tuple(g.shape)} strides {g.stride()} (input strides {q.stride()})")


if __name__ == "__main__":
    main()
