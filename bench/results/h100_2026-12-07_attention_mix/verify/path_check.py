"""Which forward -fa 1 takes in a block as the trainer runs it (bf16 GPT, train mode, eager and compiled per block,
parameters requiring gradients): FlashAttention-4's forward is replaced by one that raises, so the forward passes only
if cuDNN's is taken; and PyTorch's own check on the q/k/v views, with its reasons printed if it refuses.
    python bench/results/h100_2026-12-07_attention_mix/verify/path_check.py     (a CUDA GPU; no flash-attn-4 needed)"""
import os
import sys

import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), *[".."] * 4)))
from ds_train import flash_attention  # noqa: E402
from ds_train.model import GPT, config_from_descriptor  # noqa: E402


def refuse(*args):
    raise RuntimeError("FlashAttention-4's forward was called")


flash_attention.flash_attention_4_forward = refuse
print(torch.cuda.get_device_name(), torch.__version__, "cuDNN", torch.backends.cudnn.version())
for compiled in (False, True):
    model = GPT(config_from_descriptor("gpt2:d2:c128:h2")).cuda().bfloat16()
    model.set_flash_attention(1)
    if compiled:
        model.set_compile(True)
    idx = torch.randint(0, 50257, (4, 1024), device="cuda")
    loss = model(idx, idx.roll(-1, 1))
    print(f"compiled={compiled}: forward through cuDNN's attention, loss {loss.item():.4f}")
qkv = torch.randn(4, 1024, 3 * 768, device="cuda", dtype=torch.bfloat16, requires_grad=True) * 1
q, k, v = (t.transpose(1, 2) for t in qkv.view(4, 1024, 3, 12, 64).unbind(2))
print("can_use_cudnn_attention:", torch.backends.cuda.can_use_cudnn_attention(
    torch.backends.cuda.SDPAParams(q, k, v, None, 0.0, True, False), True))
