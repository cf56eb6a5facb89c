"""Causal attention as a block computes it, from the c_attn output qkv (B, T, 3C) to (B, T, C) and back to the
gradient at qkv, with each kernel on offer: SDPA as the model calls it (PyTorch's pick of backend) and with its
cuDNN and flash backends forced, and ds_train.flash_attention (FlashAttention-4, -fa 1). Prints the median
time of the forward alone and of forward+backward, the attention TFLOP/s of the latter (causal: half the
T x T products; backward counted as 2.5 forwards, as FlashAttention's papers count), the first call's time
(FlashAttention-4 compiles its kernels then) and each variant's largest difference from SDPA's output and
gradient, for the shapes of d12, d24 and d48 at their micro-batches.
    python bench/attention_kernels.py        (a CUDA GPU; -fa 1 needs flash-attn-4 installed)
"""

import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ds_train import flash_attention  # noqa: E402
from ds_train.model import config_from_descriptor  # noqa: E402
from gelu_epilogue import timed  # noqa: E402  (bench/, the script's own folder)

SHAPES = [("d12", 64), ("d24", 64), ("d48", 16)]  # model, micro-batch (the 124M/350M/1558M scripts' -b)
T = 1024


def sdpa(qkv, n_head, backend=None):
    """The model's SDPA path (CausalSelfAttention.forward between the two linears)."""
    B, T, C3 = qkv.shape
    q, k, v = qkv.view(B, T, 3, n_head, C3 // (3 * n_head)).permute(2, 0, 3, 1, 4).unbind(0)
    if backend is None:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        with sdpa_kernel(backend):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return y.transpose(1, 2).reshape(B, T, C3 // 3)


def variants():
    yield "sdpa (default)", lambda qkv, h: sdpa(qkv, h)
    yield "sdpa cudnn", lambda qkv, h: sdpa(qkv, h, SDPBackend.CUDNN_ATTENTION)
    yield "sdpa flash", lambda qkv, h: sdpa(qkv, h, SDPBackend.FLASH_ATTENTION)
    reason = flash_attention.unavailable_reason()
    if reason:
        print(f"(FlashAttention-4 left out: {reason})")
    else:
        yield "flash-attn-4 (-fa 1)", flash_attention.causal_attention


def main():
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | bf16, T={T}, head size 64, causal")
    print(f"{'shape':<12}{'kernel':<22}{'first call s':>13}{'fwd ms':>9}{'fwd+bwd ms':>12}{'TFLOP/s':>9}"
          f"{'max |dy| / max |y|':>20}{'max |dqkv| / max':>18}")
    for descriptor, B in SHAPES:
        cfg = config_from_descriptor(descriptor)
        C, H = cfg.n_embd, cfg.n_head
        torch.manual_seed(0)
        qkv = torch.randn(B, T, 3 * C, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        grad_y = torch.randn(B, T, C, device="cuda", dtype=torch.bfloat16)
        y_ref = sdpa(qkv, H)
        g_ref, = torch.autograd.grad(y_ref, qkv, grad_y)
        flops = 3.5 * 4 * B * H * T * T * (C // H) / 2  # forward and 2.5x for backward, half under the mask
        for name, fn in variants():
            torch.cuda.synchronize()
            start = time.perf_counter()
            y = fn(qkv, H)
            g, = torch.autograd.grad(y, qkv, grad_y)
            torch.cuda.synchronize()
            first = time.perf_counter() - start
            with torch.no_grad():
                fwd = timed(lambda: fn(qkv, H))
            both = timed(lambda: torch.autograd.grad(fn(qkv, H), qkv, grad_y))
            dy = ((y - y_ref).abs().max() / y_ref.abs().max()).item()
            dg = ((g - g_ref).abs().max() / g_ref.abs().max()).item()
            print(f"{descriptor} B={B:<5}{name:<22}{first:>13.2f}{fwd:>9.3f}{both:>12.3f}{flops / both / 1e9:>9.0f}"
                  f"{dy:>20.2e}{dg:>18.2e}")


if __name__ == "__main__":
    main()
