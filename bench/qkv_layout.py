"""One transformer block's forward and backward, compiled as the trainer compiles it (bf16, torch.compile of
Block.forward, GELU fusion as the trainer's default for the shape), with q/k/v from one (B, T, 3C) matmul as
ds_train computes them ("interleaved": attention's backward gives the three gradients apart and a copy
interleaves them for the matmul's backward) and as three matmuls on thirds of the same weight ("split": no
copy, but three smaller matmuls each way and the input gradient summed from three). Prints the gradients'
largest difference between the two and the median time of each, for the shapes of d12, d24 and d48 at their
micro-batches. On an H200 (2026-12-01) the split was 2.5% slower for d12 and d48 and even for d24, so the model
keeps one matmul.
    python bench/qkv_layout.py            (a CUDA GPU; builds the GELU extension on first use)
"""

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ds_train.model import GPT, Block, CausalSelfAttention, config_from_descriptor  # noqa: E402
from gelu_epilogue import timed  # noqa: E402  (bench/, the script's own folder)

SHAPES = [("d12", 64, 2), ("d24", 32, 1), ("d48", 16, 2)]  # model, micro-batch, -ge (the trainer's choice)


def split_forward(self, x):  # the variant: q, k and v each from its third of c_attn
    B, T, C = x.shape
    thirds = zip(self.c_attn.weight.chunk(3), self.c_attn.bias.chunk(3))
    q, k, v = (F.linear(x, w, b).view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for w, b in thirds)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


def block_for(descriptor: str, gelu_fusion: int, layout: str) -> Block:
    cfg = config_from_descriptor(descriptor)
    model = GPT(config_from_descriptor(f"gpt2:d1:c{cfg.n_embd}:h{cfg.n_head}"))
    model.set_gelu_fusion(gelu_fusion)
    block = model.transformer.h[0].to(device="cuda", dtype=torch.bfloat16)
    if layout == "split":
        block.attn.forward = split_forward.__get__(block.attn, CausalSelfAttention)
    block.forward = torch.compile(Block.forward.__get__(block))
    return block


def step_ms(block, x, grad_out, reps=20):
    delta = torch.zeros_like(x)  # the block before's MLP output (Block.forward); none here

    def step():
        for p in block.parameters():
            p.grad = None
        x.grad = None
        torch.autograd.backward(block(x, delta), [grad_out, grad_out])  # the pair's sum is the output

    return timed(step, reps)


def main():
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | one block, forward+backward, bf16, compiled")
    print(f"{'shape':<16}{'interleaved ms':>16}{'split ms':>10}{'saved':>8}{'max grad diff / max grad':>28}")
    for descriptor, B, ge in SHAPES:
        torch.manual_seed(0)
        C = config_from_descriptor(descriptor).n_embd
        x = torch.randn(B, 1024, C, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        grad_out = torch.randn_like(x)
        ms, grads = {}, {}
        for layout in ("interleaved", "split"):
            block = block_for(descriptor, ge, layout)
            ms[layout] = step_ms(block, x, grad_out)
            grads[layout] = [x.grad.float()] + [p.grad.float() for p in block.parameters()]
        err = max(((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item()
                  for a, b in zip(grads["interleaved"], grads["split"]))
        saved = 1 - ms["split"] / ms["interleaved"]
        print(f"{descriptor} B={B} -ge {ge:<4}{ms['interleaved']:>14.3f}{ms['split']:>10.3f}{saved:>8.1%}{err:>28.2e}")


if __name__ == "__main__":
    main()
