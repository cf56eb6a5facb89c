"""Where a d12 micro-step's time goes, without DeepSpeed: ds_train's GPT in bf16, B=16, T=1024, forward+backward.

    python bench/profile_d12.py          (on a GPU; about a minute, most of it torch.compile)

Times (CUDA events, median of 10 after 3 warm-ups) for: the model as ds_train builds it; GELU recompute (-r 1);
the LM head over the padded 50304 rows (then sliced to 50257) instead of a 50257-row slice of the weight;
torch.compile. Then a profiler table of the eager model's top CUDA kernels, and GPU-busy time vs wall time.
"""

import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ds_train.model import GPT, config_from_descriptor  # noqa: E402

B, T, PEAK = 16, 1024, 989e12
CFG = config_from_descriptor("d12")
FLOPS = CFG.flops_per_token(T) * B * T


def build(recompute=0, padded_head=False):
    model = GPT(CFG, recompute=recompute).cuda().to(torch.bfloat16)  # DeepSpeed bf16 runs the module in bf16
    if padded_head:
        head = model.lm_head
        head.forward = lambda x: F.linear(x, head.weight)[..., :head.vocab_size]
    return model


def data():
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randint(0, CFG.vocab_size, (B, T + 1), device="cuda", generator=g)
    return x[:, :-1].contiguous(), x[:, 1:].contiguous()


def step(model, x, y):
    loss = model(x, y)
    loss.backward()
    for p in model.parameters():
        p.grad = None
    return loss


def time_it(fn, warmup=3, reps=10):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times), min(times), max(times)


def main():
    print(torch.cuda.get_device_name(), torch.__version__)
    x, y = data()
    variants = [("eager (as ds_train)", dict(), False), ("eager, -r 1", dict(recompute=1), False),
                ("eager, padded LM head", dict(padded_head=True), False), ("torch.compile", dict(), True)]
    print(f"{'variant':<24} {'median ms':>9} {'min':>7} {'max':>7} {'tok/s':>8} {'MFU%':>5} {'peak GiB':>8}")
    for name, kw, compiled in variants:
        torch.cuda.reset_peak_memory_stats()
        model = build(**kw)
        run = torch.compile(model) if compiled else model
        med, lo, hi = time_it(lambda: step(run, x, y))
        print(f"{name:<24} {med:9.2f} {lo:7.2f} {hi:7.2f} {B * T / med * 1e3:8.0f} {100 * FLOPS / (med / 1e3) / PEAK:5.1f} "
              f"{torch.cuda.max_memory_allocated() / 2**30:8.2f}", flush=True)
        del model, run
        torch.cuda.empty_cache()

    model = build()
    time_it(lambda: step(model, x, y), reps=1)
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    wall = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        wall[0].record()
        for _ in range(3):
            step(model, x, y)
        wall[1].record()
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernel_us = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    print(f"\nprofiled 3 eager steps: wall {wall[0].elapsed_time(wall[1]):.1f} ms, GPU kernels {kernel_us / 1e3:.1f} ms")
    print(events.table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=70))


if __name__ == "__main__":
    main()
