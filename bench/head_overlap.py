"""The head's loss on one GPU with its softmax on a second stream beside the matmuls, against one stream.

    python bench/head_overlap.py

ds_train's head (ds_train/loss.py) runs three matmuls per chunk of rows (the logits, then the input and weight
gradients) and between them a Triton kernel that only moves memory (the softmax gradient, written over the
logits). On one stream the GPU's arithmetic units idle during that kernel. `two_streams` below runs chunk i's
kernel on a second (high-priority) stream while the first runs chunk i+1's logits and chunk i-1's gradients:
the same kernels in the same order per stream, so the same bits. For each model's head shape (d12 and d24 at
B=64, d48 at B=16; T=1024) this prints the median time of one forward+backward (CUDA events, 3 warm-ups, 30
timed) on one stream (ds_train's head as it is) and on two, the matmuls alone and the softmax alone (a perfect
overlap would leave the matmuls), peak memory, and whether the results are the same bits. Then d12 at other
chunk sizes, and with the matmuls limited to fewer SMs (torch's SM carve-out, where it has one), which would
leave SMs free for the softmax. H200, 2026-12-01: two streams 2.3-4.5% slower, the carve-out changed nothing
(bench/results/h200_2026-12-01_head/); ds_train keeps one stream.
"""

import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from gelu_epilogue import timed  # noqa: E402  (bench/, the script's own folder)
from ds_train import loss  # noqa: E402

V, VP = 50257, 50304
SHAPES = {"d12": (65536, 768), "d24": (65536, 1024), "d48": (16384, 1600)}


def inputs(rows, channels):
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = (torch.randn(rows, channels, device="cuda", generator=gen) * 0.5).bfloat16().requires_grad_()
    w = (torch.randn(VP, channels, device="cuda", generator=gen) * 0.02).bfloat16().requires_grad_()
    return x, w, torch.randint(0, V, (rows,), device="cuda", generator=gen)


def head(x, w, t, overlap=True, chunk_rows=loss.CHUNK_ROWS):
    """One forward+backward of the head: ds_train's (one stream), or two_streams' -> (loss, dx, dW) as run() leaves
    them in x.grad and w.grad."""
    def run():
        x.grad = w.grad = None
        if overlap:
            out, x.grad, w.grad = two_streams(x, w, t, chunk_rows)
            return out
        out = loss.linear_cross_entropy(x, w, t, V, loss.TRITON_CHUNK_FNS, chunk_rows=chunk_rows)
        out.backward()
        return out
    return run


@functools.cache
def side_stream():
    return torch.cuda.Stream(priority=-1)  # high priority: its softmax is what the matmuls wait for next


def two_streams(x, w, t, chunk_rows):
    """ds_train.loss.LinearCrossEntropy's forward (which computes the gradients too) with each chunk's softmax
    kernel on a second stream -> (mean loss, dx in bf16, dW in bf16)."""
    main, side = torch.cuda.current_stream(), side_stream()
    rows = x.shape[0]
    total = torch.zeros((), dtype=torch.float32, device=x.device)
    grad_x = torch.empty_like(x)
    grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
    with torch.no_grad():
        def finish(start, grad_logits, loss_sum, done):  # a chunk's gradient matmuls, once its softmax is done
            main.wait_event(done)
            total.add_(loss_sum)
            torch.mm(grad_logits, w, out=grad_x[start:start + chunk_rows])
            loss._accumulate(grad_w, grad_logits, x[start:start + chunk_rows])

        pending = None
        for start in range(0, rows, chunk_rows):
            logits = x[start:start + chunk_rows] @ w.t()
            side.wait_stream(main)
            with torch.cuda.stream(side):
                loss_sum, grad_logits = loss.TRITON_CHUNK_FNS[1](logits, t[start:start + chunk_rows], V, 1.0 / rows)
                done = side.record_event()
            loss_sum.record_stream(main)  # made on the side stream, last used on this one
            if pending is not None:
                finish(*pending)
            pending = (start, grad_logits, loss_sum, done)
        finish(*pending)
    return total / rows, grad_x, grad_w.to(w.dtype)


def parts(x, w, t, chunk_rows=loss.CHUNK_ROWS):
    """The head's matmuls alone (as the head runs them) and its softmax kernel alone."""
    grad_x = torch.empty_like(x)
    grad_w = torch.zeros(w.shape, dtype=torch.float32, device="cuda")
    logits = [x[s:s + chunk_rows] @ w.t() for s in range(0, x.shape[0], chunk_rows)]

    def matmuls():
        with torch.no_grad():
            for i, s in enumerate(range(0, x.shape[0], chunk_rows)):
                chunk = x[s:s + chunk_rows] @ w.t()
                torch.mm(logits[i], w, out=grad_x[s:s + chunk_rows])
                loss._accumulate(grad_w, logits[i], x[s:s + chunk_rows])
            return chunk

    def softmax():
        for i, s in enumerate(range(0, x.shape[0], chunk_rows)):
            loss.TRITON_CHUNK_FNS[1](logits[i], t[s:s + chunk_rows], V, 1e-5)
    return matmuls, softmax


def peak_gib(fn):
    fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30


def same_bits(x, w, t, **kwargs):
    results = []
    for overlap in (False, True):
        out = head(x, w, t, overlap, **kwargs)()
        results.append((out.detach().clone(), x.grad.clone(), w.grad.clone()))
    return all(torch.equal(a, b) for a, b in zip(*results))


def main():
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | head: chunks of {loss.CHUNK_ROWS} rows, "
          f"vocab {VP}, bf16")
    print(f"{'shape':<26} {'one stream':>10} {'two':>8} {'gain':>6} {'matmuls':>8} {'softmax':>8} "
          f"{'peak 1 / 2 GiB':>15} {'same bits':>9}")
    for name, (rows, channels) in SHAPES.items():
        x, w, t = inputs(rows, channels)
        one, two = timed(head(x, w, t, False)), timed(head(x, w, t, True))
        matmuls, softmax = (timed(fn) for fn in parts(x, w, t))
        peaks = peak_gib(head(x, w, t, False)), peak_gib(head(x, w, t, True))
        print(f"{name + f' ({rows} x {channels})':<26} {one:>10.2f} {two:>8.2f} {100 * (one / two - 1):>5.1f}% "
              f"{matmuls:>8.2f} {softmax:>8.2f} {peaks[0]:>7.2f} / {peaks[1]:<5.2f} {str(same_bits(x, w, t)):>9}")

    x, w, t = inputs(*SHAPES["d12"])
    print("\nd12, ms per forward+backward")
    for rows in (2048, 8192):
        print(f"  chunks of {rows} rows: one stream {timed(head(x, w, t, False, rows)):.2f}, two "
              f"{timed(head(x, w, t, True, rows)):.2f} (same bits: {same_bits(x, w, t, chunk_rows=rows)})")
    if hasattr(torch._C, "_set_sm_carveout_experimental"):
        for carveout in (8, 16, 32):
            torch._C._set_sm_carveout_experimental(carveout)
            try:
                print(f"  matmuls on {carveout} SMs fewer: one stream {timed(head(x, w, t, False)):.2f}, two "
                      f"{timed(head(x, w, t, True)):.2f}, the matmuls alone {timed(parts(x, w, t)[0]):.2f}")
            finally:
                torch._C._set_sm_carveout_experimental(None)
    else:
        print("  (this torch has no SM carve-out for matmuls)")


if __name__ == "__main__":
    main()
