"""FlashAttention-4's backward on Hopper with other tile and pipeline settings, for the trainer's attention shapes.

On sm90 flash-attn-4 takes the backward's settings for head size 64 from `_tile_size_bwd_sm90` (FlashAttention-3's
C++ choice, 128 x 128 tiles, tuned by its authors on an H100) whatever its caller passes. The backward is the larger
half of attention in the trainer (d24 B=64 on an H100: 1.13 ms a layer and micro-step, 217 ms of a 2286 ms step,
with its pre- and post-processing; `bench/attention_mix.py`), and the forward's tiles chosen for T=1024 ran 6.5%
faster than flash-attn-4's own (`bench/attention_tiles.py`). This times the backward as the trainer runs it
(`flash_attention.attention_qkv_backward`, cuDNN's forward's output and log-sum-exp, dq/dk/dv written into one
(B, T, 3, H, D) buffer) with each setting below in place of flash-attn-4's, in interleaved rounds so that clock and
power drift fall on all alike: the GPU time of the whole call (preprocess, main kernel, postprocess) and of the main
kernel alone, both from one profile a round by `attention_tiles.kernels_ms`, and the largest difference of the
gradient from the default's, relative to its largest value. A setting the kernel rejects prints its error and the
rest go on.
    python bench/attention_bwd_tiles.py [d24 d12 d48]     (a Hopper GPU and flash-attn-4)
The trainer with one of these settings, for an A/B against the default (ds_train itself is not changed):
    python bench/attention_bwd_tiles.py --train SETTING ds_train/main.py FLAGS...
"""

import contextlib
import dataclasses
import os
import runpy
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ds_train import flash_attention  # noqa: E402
from ds_train.model import config_from_descriptor  # noqa: E402
from attention_tiles import kernels_ms  # noqa: E402  (bench/, the script's own folder: 20 calls, torch.profiler)

SHAPES = {"d12": 64, "d24": 64, "d48": 16}  # the 124M/350M/1558M scripts' micro-batches, T=1024
# name -> fields of flash-attn-4's BwdConfig changed from its own choice for head size 64 on sm90 (128 x 128 tiles of
# m query rows by n key columns, two stages of the Q, dO and P/dS buffers, the S/dP MMAs' operands swapped, dQ over
# both MMA warp groups): smaller tiles, single stages, each MMA's operands the other way round
SETTINGS = {
    "default": {},
    "pds1": dict(num_stages_PdS=1),
    "do1": dict(num_stages_dO=1),
    "stages1": dict(num_stages_Q=1, num_stages_dO=1, num_stages_PdS=1),
    "m64": dict(m_block_size=64, AtomLayoutMdQ=1),
    "m64-dq1wg": dict(m_block_size=64, AtomLayoutMdQ=1, dQ_single_wg=True),
    "n64": dict(n_block_size=64),
    "n96": dict(n_block_size=96),
    "sdp-unswapped": dict(SdP_swapAB=False, AtomLayoutMSdP=2),
    "dq-swapped": dict(dQ_swapAB=True),
    "dkv-swapped": dict(dKV_swapAB=True),
    "m64-n64": dict(m_block_size=64, n_block_size=64, AtomLayoutMdQ=1),
}
ROUNDS = 5


@contextlib.contextmanager
def backward_setting(name, cache=None):
    """flash-attn-4's sm90 backward with SETTINGS[name] in place of its own choice, inside the block. cache: a
    compile cache of this setting's own, since flash-attn-4 keys its compiled kernels by most of these fields but
    not all (num_stages_PdS is not in the key)."""
    interface = flash_attention._kernels()
    own_choice, own_cache = interface._tile_size_bwd_sm90, interface._flash_attn_bwd.compile_cache

    def chosen(*args, **kwargs):
        return dataclasses.replace(own_choice(*args, **kwargs), **SETTINGS[name])

    interface._tile_size_bwd_sm90 = chosen
    if cache is not None:
        interface._flash_attn_bwd.compile_cache = cache
    try:
        yield
    finally:
        interface._tile_size_bwd_sm90, interface._flash_attn_bwd.compile_cache = own_choice, own_cache


def sweep(descriptor):
    cfg = config_from_descriptor(descriptor)
    B, T, C, H = SHAPES[descriptor], 1024, cfg.n_embd, cfg.n_head
    torch.manual_seed(0)
    qkv = torch.randn(B, T, 3, H, C // H, device="cuda", dtype=torch.bfloat16)
    grad_out = torch.randn(B, T, H, C // H, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        out, lse = flash_attention.attention_qkv(qkv)
    flops = 2.5 * 4 * B * H * T * T * (C // H) / 2  # causal: half the T x T products; backward 2.5 forwards

    def backward():
        return flash_attention.attention_qkv_backward(qkv, out, lse, grad_out)

    from flash_attn.cute.cache_utils import JITCache
    caches, diffs = {}, {}
    reference = backward()
    scale = reference.abs().max().item()
    for name in SETTINGS:
        caches[name] = JITCache()
        try:
            with backward_setting(name, caches[name]):
                grad = backward()
                torch.cuda.synchronize()
        except Exception as e:  # a setting the kernel rejects: say so and go on with the rest
            first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
            print(f"{descriptor} B={B:<4}{name:<22} failed: {first_line[:90]}", flush=True)
            del caches[name]
            continue
        diffs[name] = (grad - reference).abs().max().item() / scale
    times = {name: ([], []) for name in caches}
    for _ in range(ROUNDS):
        for name, cache in caches.items():
            with backward_setting(name, cache):
                call, main_kernel = kernels_ms(backward, (None, "FlashAttentionBackwardSm90"))
                times[name][0].append(call)
                times[name][1].append(main_kernel)
    median = {name: [sorted(t)[ROUNDS // 2] for t in pair] for name, pair in times.items()}
    base = median["default"][0]
    for name in caches:
        call, main_kernel = median[name]
        print(f"{descriptor} B={B:<4}{name:<22}{call:>9.3f}{min(times[name][0]):>9.3f}{main_kernel:>9.3f}"
              f"{flops / call / 1e9:>9.0f}{call / base - 1:>+10.1%}{diffs[name]:>12.2e}", flush=True)


def main():
    if reason := flash_attention.unavailable_reason():
        sys.exit(f"bench/attention_bwd_tiles.py: FlashAttention-4 cannot run here: {reason}")
    if len(sys.argv) > 1 and sys.argv[1] == "--train":
        if len(sys.argv) < 4 or sys.argv[2] not in SETTINGS:
            sys.exit(f"bench/attention_bwd_tiles.py --train: expected one of {', '.join(SETTINGS)} and then "
                     "ds_train/main.py and its flags")
        name, script = sys.argv[2], sys.argv[3]
        sys.argv = sys.argv[3:]
        with backward_setting(name):
            runpy.run_path(script, run_name="__main__")
        return
    shapes = sys.argv[1:] or ["d24", "d12", "d48"]
    if unknown := [s for s in shapes if s not in SHAPES]:
        sys.exit(f"bench/attention_bwd_tiles.py: unknown shape {unknown[0]} (expected some of {', '.join(SHAPES)})")
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | bf16, head size 64, causal, backward from "
          f"cuDNN's forward | GPU ms, the median and best of {ROUNDS} rounds of 20 calls")
    print(f"{'shape':<10}{'setting':<22}{'call ms':>9}{'best':>9}{'main ms':>9}{'TFLOP/s':>9}{'vs default':>10}"
          f"{'max |dgrad|':>12}")
    for descriptor in shapes:
        sweep(descriptor)


if __name__ == "__main__":
    main()
