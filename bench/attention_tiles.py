"""FlashAttention-4's forward kernel on Hopper with each tile shape on offer, for the trainer's attention shapes.

flash-attn-4 picks 192 x 128 tiles (query rows x key columns) for head size 64 on sm90, tuned by its authors on
an H100 across sequence lengths. At T=1024 a head's sixth 192-row block holds 64 rows, and the forward ran about
234 TFLOP/s in the trainer's profile where the backward ran 369 (docs/performance.md). This times the forward
alone, called as ds_train.flash_attention calls it (strided q, k, v views of the c_attn output), with each
configuration below, in interleaved rounds so that clock and power drift fall on all of them alike. Times are
the kernel's own, from torch.profiler: CUDA events around a call also hold the call's host time (FlashAttention-4
looks up its compiled kernel in Python), which on these shapes is a fifth of the event time and the same for
every tile. It prints each one's median and best round (the mean of 20 calls each), its TFLOP/s (causal: half
the T x T products) and its largest difference from the default's output and log-sum-exp.
    python bench/attention_tiles.py       (a Hopper GPU and flash-attn-4)
"""

import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ds_train import flash_attention  # noqa: E402
from ds_train.model import config_from_descriptor  # noqa: E402

# model, micro-batch, T: the 124M/350M/1558M scripts' shapes, then d12 at other lengths (about 65K tokens each)
SHAPES = [("d12", 64, 1024), ("d24", 64, 1024), ("d48", 16, 1024),
          ("d12", 128, 512), ("d12", 42, 1536), ("d12", 32, 2048), ("d12", 16, 4096)]
# (tile_mn, mma_pv_is_rs, intra_wg_overlap); None leaves the choice to flash-attn-4 (its default first)
CONFIGS = [(None, None, None), ((128, 128), None, None), ((128, 128), False, None), ((128, 192), None, None),
           ((128, 64), None, None), ((192, 128), None, False)]
ROUNDS = 5


def forward(qkv, n_head, tile_mn, rs, overlap):
    B, T, C3 = qkv.shape
    q, k, v = qkv.view(B, T, 3, n_head, C3 // (3 * n_head)).unbind(2)
    with flash_attention._kernel_call():
        out, lse, *_ = flash_attention._kernels()._flash_attn_fwd(
            q, k, v, causal=True, return_lse=True, tile_mn=tile_mn, mma_pv_is_rs=rs, intra_wg_overlap=overlap)
    return out, lse


def kernel_ms(fn, reps=20, kernel=None):
    """The GPU time of one call of fn, the mean over reps calls, as torch.profiler saw its kernels run (CUDA
    events around a call would hold its host time too): of the kernels whose name holds `kernel` (one a call),
    or of all of them."""
    return kernels_ms(fn, (kernel,), reps)[0]


def kernels_ms(fn, kernels, reps=20):
    """kernel_ms for each name in `kernels` (None: all of a call's kernels), from one profile of reps calls."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    times = []
    for kernel in kernels:
        matched = [e.device_time_total for e in events if kernel is None or kernel in e.name]
        assert kernel is None or len(matched) == reps, f"expected {reps} {kernel} kernels, found {len(matched)}"
        times.append(sum(matched) / reps / 1000)
    return times


def label(config):
    tile_mn, rs, overlap = config
    text = "default (192x128)" if tile_mn is None else f"{tile_mn[0]}x{tile_mn[1]}"
    return text + ("" if rs is None else f" rs={int(rs)}") + ("" if overlap is None else f" overlap={int(overlap)}")


def main():
    if reason := flash_attention.unavailable_reason():
        sys.exit(f"bench/attention_tiles.py: FlashAttention-4 cannot run here: {reason}")
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | bf16, head size 64, causal, forward only")
    print(f"{'shape':<20}{'tiles':<26}{'median ms':>10}{'best ms':>9}{'TFLOP/s':>9}{'vs default':>11}"
          f"{'max |dout|':>12}{'max |dlse|':>12}")
    for descriptor, B, T in SHAPES:
        cfg = config_from_descriptor(descriptor)
        C, H = cfg.n_embd, cfg.n_head
        torch.manual_seed(0)
        qkv = torch.randn(B, T, 3 * C, device="cuda", dtype=torch.bfloat16)
        flops = 4 * B * H * T * T * (C // H) / 2
        with torch.no_grad():
            ref_out, ref_lse = forward(qkv, H, *CONFIGS[0])
            usable, diffs = [], {}
            for config in CONFIGS:
                try:
                    out, lse = forward(qkv, H, *config)
                except Exception as e:  # a shape the kernel rejects: say so and go on with the rest
                    print(f"{descriptor} B={B} T={T:<8}{label(config):<26} failed: {str(e).splitlines()[0][:80]}")
                    continue
                usable.append(config)
                diffs[config] = ((out - ref_out).abs().max().item(), (lse - ref_lse).abs().max().item())
            times = {config: [] for config in usable}
            for _ in range(ROUNDS):
                for config in usable:
                    times[config].append(kernel_ms(lambda: forward(qkv, H, *config), kernel="FlashAttentionForward"))
        base = sorted(times[CONFIGS[0]])[ROUNDS // 2]
        for config in usable:
            median, best = sorted(times[config])[ROUNDS // 2], min(times[config])
            print(f"{descriptor} B={B} T={T:<8}{label(config):<26}{median:>10.3f}{best:>9.3f}"
                  f"{flops / median / 1e9:>9.0f}{median / base - 1:>+10.1%}{diffs[config][0]:>12.2e}"
                  f"{diffs[config][1]:>12.2e}")


if __name__ == "__main__":
    main()
