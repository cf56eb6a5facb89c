"""The head's loss alone on a GPU, for d12 at B=64, T=1024 (65536 rows, C=768, 50304 padded vocab, bf16):
ms per forward+backward and peak memory of the ways ds_train could compute it, and their agreement.

    python bench/loss_kernels.py [--rows 65536] [--channels 768]

  full logits, compiled    torch.compile(F.cross_entropy(x @ W.T [:, :50257].float()))  (the plain way)
  chunks eager             ds_train.loss with the eager chunk functions
  chunks compiled          ds_train.loss with the torch.compile'd chunk functions
  chunks Triton            ds_train.loss with its Triton softmax-gradient kernel (what a GPU run uses)
Also the three SDPA backends on d12's attention shape, forward+backward.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ds_train import loss  # noqa: E402

V = 50257


def timed(fn, repeat=5):
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat * 1000, (torch.cuda.max_memory_allocated() - base) / 2**30, out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=65536)
    p.add_argument("--channels", type=int, default=768)
    a = p.parse_args()
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = (torch.randn(a.rows, a.channels, device="cuda", generator=gen) * 0.5).bfloat16().requires_grad_()
    w = (torch.randn(50304, a.channels, device="cuda", generator=gen) * 0.02).bfloat16().requires_grad_()
    t = torch.randint(0, V, (a.rows,), device="cuda", generator=gen)

    @torch.compile
    def full(x, w, t):
        return F.cross_entropy((x @ w.t())[:, :V].float(), t)

    compiled_fns = loss.compiled_chunk_fns()
    variants = {"full logits, compiled": lambda: full(x, w, t),
                "chunks eager": lambda: loss.linear_cross_entropy(x, w, t, V, loss.EAGER_CHUNK_FNS),
                "chunks compiled": lambda: loss.linear_cross_entropy(x, w, t, V, compiled_fns)}
    if loss.triton_available():
        variants["chunks Triton"] = lambda: loss.linear_cross_entropy(x, w, t, V, loss.TRITON_CHUNK_FNS)
        variants["chunks CUDA (the trainer's)"] = lambda: loss.linear_cross_entropy(x, w, t, V, loss.GPU_CHUNK_FNS)
        for rows in (2048, 8192):
            variants[f"chunks Triton, {rows} rows"] = \
                lambda rows=rows: loss.linear_cross_entropy(x, w, t, V, loss.TRITON_CHUNK_FNS, chunk_rows=rows)
    reference = None
    print(f"{'variant':<24} {'ms fwd+bwd':>10} {'peak GiB':>9} {'loss':>10} {'max |dx| err':>12} {'max |dW| err':>12}")
    for name, fn in variants.items():
        def step():
            x.grad = w.grad = None
            out = fn()
            out.backward()
            return out
        ms, peak, out = timed(step)
        grads = (x.grad.float(), w.grad.float())
        if reference is None:
            reference = (out.item(), grads)
        errs = [float((g - r).abs().max()) for g, r in zip(grads, reference[1])]
        print(f"{name:<24} {ms:>10.2f} {peak:>9.2f} {out.item():>10.6f} {errs[0]:>12.2e} {errs[1]:>12.2e}")

    from torch.nn.attention import SDPBackend, sdpa_kernel
    B, H, T, D = a.rows // 1024, a.channels // 64, 1024, 64
    q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    print(f"\nattention B={B} H={H} T={T} D={D}, causal, forward+backward")
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        def attn():
            with sdpa_kernel(backend):
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            out.sum().backward()
        try:
            ms, peak, _ = timed(attn)
            print(f"{backend.name:<24} {ms:>10.2f} ms")
        except RuntimeError as e:
            print(f"{backend.name:<24} unavailable: {str(e).splitlines()[0][:80]}")


if __name__ == "__main__":
    main()
