"""One compiled block of the trainer (bf16, -ge 2, attention on SDPA), forward and backward, for the shapes of
d12, d24 and d48 at their micro-batches (and GPT-3 XL's, gpt3:c2048): the block's time and its compiled Triton
kernels' time, each kernel's microseconds per call also in units of one plain copy of a (B*T, C) bf16
activation (one read and one write of it, the least a LayerNorm or a residual add must move). The block
compiles as GPT.set_compile compiles it, with ds_train.inductor_choices, or with INDUCTOR_CHOICES=default with
Inductor's own; other Inductor settings come from the environment, so that one call per setting compares them
without sharing caches:

    python bench/block_kernels.py [d12 d24 d48 gpt3:c2048]
    INDUCTOR_CHOICES=default python bench/block_kernels.py d48
    TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1 python bench/block_kernels.py d48
"""

import os
import sys
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ds_train import inductor_choices  # noqa: E402
from ds_train.model import Block, config_from_descriptor  # noqa: E402
from gelu_epilogue import timed  # noqa: E402  (bench/, the script's own folder)

SHAPES = {"d12": (64, 1024), "d24": (64, 1024), "d48": (16, 1024),  # the 124M/350M/1558M scripts' -b and -t
          "gpt3:c2048": (8, 2048)}  # GPT-3 XL, its rows 2048 wide


def main():
    settings = {k: v for k, v in os.environ.items() if k.startswith("TORCHINDUCTOR_")}
    if os.environ.get("INDUCTOR_CHOICES") != "default":  # as GPT.set_compile: ds_train's choices
        inductor_choices.install()
        settings["choices"] = "ds_train.inductor_choices"
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | Inductor: {settings or 'its defaults'}")
    for size in sys.argv[1:] or ["d12", "d24", "d48"]:
        cfg, (B, T) = config_from_descriptor(size), SHAPES[size]
        torch.manual_seed(0)
        block = Block(cfg).cuda().to(torch.bfloat16)
        block.mlp.gelu_fusion = 2
        forward = torch.compile(Block.forward.__get__(block))
        x = torch.randn(B, T, cfg.n_embd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        delta = torch.randn_like(x, requires_grad=True)  # the block before's MLP output (Block.forward)
        grad = torch.randn_like(x)

        def step():  # the block's output is the pair's sum, so both get its gradient
            torch.autograd.backward(forward(x, delta), [grad, grad])

        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - start
        copy_src = torch.empty(B * T, cfg.n_embd, device="cuda", dtype=torch.bfloat16)
        copy_dst = torch.empty_like(copy_src)
        copy_us = timed(lambda: copy_dst.copy_(copy_src), reps=50) * 1000
        block_ms = timed(step)
        x.grad = None
        for p in block.parameters():
            p.grad = None
        step()  # the gradients of one call, to compare settings by
        checksum = (x.grad.float().norm().item(), block.mlp.c_fc.weight.grad.float().norm().item())
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                step()
            torch.cuda.synchronize()
        by_name = defaultdict(lambda: [0.0, 0])
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                by_name[e.name][0] += e.device_time_total / 5
                by_name[e.name][1] += 1
        triton_us = sum(us for name, (us, _) in by_name.items() if name.startswith("triton_"))
        all_us = sum(us for us, _ in by_name.values())
        print(f"\n{size} B={B} T={T}: compile {compile_s:.1f} s | forward+backward {block_ms:.3f} ms | kernels "
              f"{all_us / 1000:.3f} ms, compiled Triton {triton_us / 1000:.3f} ms | one (B*T, C) bf16 copy "
              f"{copy_us:.1f} us | gradient norms {checksum[0]:.6f} {checksum[1]:.6f}")
        print(f"  {'kernel':<78} {'us/call':>8} {'calls':>5} {'copies':>6}")
        for name, (us, calls) in sorted(by_name.items(), key=lambda kv: -kv[1][0]):
            per_call = us / (calls / 5)
            print(f"  {name[:78]:<78} {per_call:>8.1f} {calls // 5:>5} {per_call / copy_us:>6.2f}")


if __name__ == "__main__":
    main()
