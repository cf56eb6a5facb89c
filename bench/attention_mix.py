"""Each direction of the trainer's causal attention by each kernel on offer, timed by the GPU's own kernel time:
FlashAttention-4's forward and backward (-fa 1, its pre- and postprocessing included), cuDNN's forward (PyTorch's
`_scaled_dot_product_cudnn_attention`, with its log-sum-exp, as training calls it) and cuDNN's backward as -fa 0 runs
it (SDPA's autograd, with the copies that interleave dq, dk and dv into the c_attn gradient). bench/attention_kernels.py
timed the two directions by CUDA events around single calls, where FlashAttention-4's host time (its Python
interface) shows; here torch.profiler sums the kernels of 20 calls, as the trainer's step sees them when the host
runs ahead. It also feeds cuDNN's output and log-sum-exp to FlashAttention-4's backward, and checks that their
log-sum-exps agree and that the gradients come out as from FlashAttention-4's own forward: the pairing of the faster
forward with the faster backward that -fa 1 runs on Hopper since 2026-12-07 (`ds_train.flash_attention`).
    python bench/attention_mix.py        (a Hopper GPU with flash-attn-4 installed)
"""

import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ds_train import flash_attention  # noqa: E402
from ds_train.model import config_from_descriptor  # noqa: E402
from attention_tiles import kernel_ms  # noqa: E402  (bench/, the script's own folder: 20 calls, torch.profiler)

SHAPES = [("d12", 64), ("d24", 64), ("d48", 16)]  # model, micro-batch (the 124M/350M/1558M scripts' -b)
T = 1024


def main():
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | cuDNN {torch.backends.cudnn.version()} | "
          f"bf16, T={T}, head size 64, causal | kernel ms per call (torch.profiler, 20 calls)")
    reason = flash_attention.unavailable_reason()
    if reason:
        sys.exit(f"attention_mix.py: FlashAttention-4 cannot run here: {reason}")
    header = (f"{'shape':<10}{'fa4 fwd':>9}{'cudnn fwd':>10}{'fa4 bwd':>9}{'fa4 bwd, cudnn fwd':>19}{'cudnn bwd':>10}"
              f"{'fa4 both':>9}{'mixed':>8}{'cudnn both':>11}{'|lse diff|':>12}{'|out| rel':>11}{'|dqkv| rel':>11}")
    print(header)
    for descriptor, B in SHAPES:
        cfg = config_from_descriptor(descriptor)
        H, D = cfg.n_head, cfg.n_embd // cfg.n_head
        torch.manual_seed(0)
        qkv = torch.randn(B, T, 3, H, D, device="cuda", dtype=torch.bfloat16)
        grad_out = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16)

        q, k, v = qkv.unbind(2)
        out_fa4, lse_fa4 = flash_attention.flash_attention_4_forward(q, k, v)
        out_cudnn, lse_cudnn = flash_attention.cudnn_forward(q, k, v)
        grad_fa4 = flash_attention.attention_qkv_backward(qkv, out_fa4, lse_fa4, grad_out)
        grad_mixed = flash_attention.attention_qkv_backward(qkv, out_cudnn, lse_cudnn, grad_out)
        lse_diff = (lse_cudnn - lse_fa4).abs().max().item()
        out_rel = ((out_cudnn.float() - out_fa4.float()).abs().max() / out_fa4.float().abs().max()).item()
        grad_rel = ((grad_mixed.float() - grad_fa4.float()).abs().max() / grad_fa4.float().abs().max()).item()

        fa4_fwd = kernel_ms(lambda: flash_attention.flash_attention_4_forward(q, k, v))
        cudnn_fwd = kernel_ms(lambda: flash_attention.cudnn_forward(q, k, v))
        fa4_bwd = kernel_ms(lambda: flash_attention.attention_qkv_backward(qkv, out_fa4, lse_fa4, grad_out))
        mixed_bwd = kernel_ms(lambda: flash_attention.attention_qkv_backward(qkv, out_cudnn, lse_cudnn, grad_out))

        # cuDNN's backward as -fa 0 runs it: SDPA's autograd from the (B, T, 3C) c_attn output
        leaf = qkv.reshape(B, T, 3 * H * D).detach().requires_grad_()

        def sdpa_out():
            q, k, v = leaf.view(B, T, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, H * D)

        y = sdpa_out()
        grad_y = grad_out.reshape(B, T, H * D)
        cudnn_bwd = kernel_ms(lambda: torch.autograd.grad(y, leaf, grad_y, retain_graph=True))
        cudnn_both = kernel_ms(lambda: torch.autograd.grad(sdpa_out(), leaf, grad_y))
        print(f"{descriptor} B={B:<4}{fa4_fwd:>9.3f}{cudnn_fwd:>10.3f}{fa4_bwd:>9.3f}{mixed_bwd:>19.3f}{cudnn_bwd:>10.3f}"
              f"{fa4_fwd + fa4_bwd:>9.3f}{cudnn_fwd + mixed_bwd:>8.3f}{cudnn_both:>11.3f}{lse_diff:>12.2e}"
              f"{out_rel:>11.2e}{grad_rel:>11.2e}")


if __name__ == "__main__":
    main()
