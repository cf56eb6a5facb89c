"""--auto_fit: the fastest setting that fits the GPU, chosen before the run starts.

The search runs over what the command line leaves open: the micro-batch B (each divisor of the rows a rank
trains on per step, so that -d stays the same through gradient accumulation), the recompute level -r 0-3,
the ZeRO stage 1-3 and --offload none | optimizer | all. Each candidate is resolved as a run
(config.resolve, so it is a valid one) and sized by memory.estimate; it fits when its estimate is within the
budget: --gpu_memory GiB, or 90% of the GPU's memory (the rest is for the CUDA context, the allocator's
fragmentation and the estimate's error; the README's memory table sets estimates beside measured peaks).
Offloading candidates must also fit the host: memory.host_estimate per rank, times the ranks on this node,
within --host_memory GiB or 90% of this machine's memory (gpt3:c4096 with its optimizer offloaded fits an
H100 but was killed on its 125 GiB host).

Among those that fit, the fastest by a model of the step time fitted to bench/memory.sh's runs on an H100
(bench/results/h100_2026-11-25_memory/):
  step = micro-steps x (micro-step time x recompute cost x ZeRO cost + parameter traffic) + optimizer offload
  micro-step time = layers x LAYER_SECONDS + B*T * flops per token / (peak * MATMUL_EFFICIENCY)
The first term is the time to issue a micro-step's kernels, which small micro-batches cannot hide (d12: 31 ms
at B=8, 130 ms at B=64; d48: 124 ms at B=4, 348 ms at B=16). With the optimizer offloaded each step adds the
CPU's AdamW and the copies over PCIe; with the parameters offloaded each micro-step also fetches them.
The model ranks the candidates (within about 10% of the measured step times); the figures it prints are
estimates, and the run's own step lines say what the chosen setting gives.
"""

import argparse
import dataclasses
import itertools
import os

from ds_train import config, memory
from ds_train.errors import UserError

BUDGET_FRACTION = 0.9
LAYER_SECONDS = 1.3e-3  # issue time per layer and micro-step: d12 19 ms, d48 51 ms at B -> 0
MATMUL_EFFICIENCY = 0.52  # of the bf16 peak, at large B: d12 0.44, d48 0.55 (the slope of time against B)
# -r 1 and 2 against -r 0 with GELU fused (the GPU default), d12 B=64 on an H200: 1.023-1.029 (GELU's recompute),
# 1.045-1.054 (also the LayerNorms'); -r 3 on an H100 at -ge 0: d12 B=64 1.221, d48 B=16 1.280
RECOMPUTE_COST = {0: 1.0, 1: 1.027, 2: 1.05, 3: 1.25}
ZERO_COST = {1: 1.0, 2: 1.052, 3: 1.053}  # d12 B=64, 0.5M-token steps, one GPU
OFFLOAD_STEP_SECONDS_PER_PARAM = {"none": 0.0, "optimizer": 0.5e-9, "params": 0.0, "all": 0.5e-9}  # d48, c2048, c2560
OFFLOAD_MICRO_SECONDS_PER_PARAM = {"none": 0.0, "optimizer": 0.0, "params": 7.5e-11, "all": 7.5e-11}  # d48 B=16
OFFLOAD_MARGIN = 1.1  # offload is chosen only when the model says it is 10% faster: its error is about that, and
# offload also takes host memory and PCIe bandwidth that the model does not weigh
MAX_MICRO_TOKENS = 65536  # B*T: the largest micro-batch measured (d12 B=64); the model would extrapolate beyond
PLANNING_PEAK_FLOPS = 989e12  # an H100's dense bf16, where the GPU's own peak is unknown
OPEN_FLAGS = ("micro_batch_size", "recompute", "zero_stage", "offload")  # what the search may choose


@dataclasses.dataclass
class Candidate:
    args: argparse.Namespace
    run: config.RunConfig
    gpu_bytes: int
    step_seconds: float  # by the model, offload's margin included

    def flags(self) -> str:
        return f"-b {self.run.B} -r {self.run.recompute} -z {self.run.zero_stage} --offload {self.run.offload}"


def step_seconds(run: config.RunConfig, peak_flops: float) -> float:
    m, tokens, N = run.model, run.B * run.T, run.model.num_params
    micro = m.n_layer * LAYER_SECONDS + tokens * m.flops_per_token(run.T) / (peak_flops * MATMUL_EFFICIENCY)
    micro = micro * RECOMPUTE_COST[run.recompute] * ZERO_COST.get(run.zero_stage, 1.0)
    micro += N * OFFLOAD_MICRO_SECONDS_PER_PARAM[run.offload]
    return run.grad_accum * micro + N * OFFLOAD_STEP_SECONDS_PER_PARAM[run.offload]


def rows_per_rank(args, world_size: int, has_gpu: bool) -> int:
    """The rows (sequences of T tokens) each rank trains on per optimizer step: -d, or the JSON's batch."""
    probe = argparse.Namespace(**{**vars(args), "micro_batch_size": 1, "recompute": 0, "zero_stage": 1, "offload": "none"})
    if args.total_batch_size is None and config.json_total_tokens(args.ds_config, args.seq_len, world_size) is None:
        raise UserError(f"--auto_fit 1: give the total batch -d (tokens per step), or train_batch_size in --ds_config "
                        f"{args.ds_config}; the search keeps it and varies -b")
    run, _, _ = config.resolve(probe, world_size, has_gpu)
    return run.total_batch_size // (run.T * world_size)


def candidates(args, world_size: int, has_gpu: bool, peak_flops: float) -> list:
    rows = rows_per_rank(args, world_size, has_gpu)
    open_values = {
        "micro_batch_size": [b for b in range(1, rows + 1) if rows % b == 0 and b * args.seq_len <= MAX_MICRO_TOKENS] or [1],
        "recompute": sorted(config.RECOMPUTE_LEVELS), "zero_stage": [1, 2, 3], "offload": ["none", "optimizer", "all"]}
    choices = [open_values[name] if getattr(args, name) is None else [getattr(args, name)] for name in OPEN_FLAGS]
    found = []
    for values in itertools.product(*choices):
        trial = argparse.Namespace(**{**vars(args), **dict(zip(OPEN_FLAGS, values))})
        try:
            run, _, _ = config.resolve(trial, world_size, has_gpu)
        except UserError:  # not a valid run (offloading parameters below ZeRO-3, ...): not a candidate
            continue
        gpu_bytes = dict(memory.estimate(run))["total"]
        seconds = step_seconds(run, peak_flops) * (OFFLOAD_MARGIN if run.offload != "none" else 1.0)
        found.append(Candidate(trial, run, gpu_bytes, seconds))
    return found


def host_budget(args) -> float:
    """Bytes the ranks of a node may use in host memory: --host_memory, or 90% of this machine's."""
    if args.host_memory is not None:
        return args.host_memory * memory.GiB
    return BUDGET_FRACTION * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def fit(args, world_size: int, has_gpu: bool, gpu_bytes, gpu_name: str, peak_flops, say,
        local_ranks: int = None) -> argparse.Namespace:
    """-> args with the chosen -b -r -z --offload, after printing the choice and why; UserError if none fits.
    local_ranks: the ranks on this node, which share its host memory (unknown: all of them)."""
    if args.gpu_memory is not None:
        budget, where = args.gpu_memory * memory.GiB, f"--gpu_memory {args.gpu_memory:g} GiB"
    elif gpu_bytes:
        budget = BUDGET_FRACTION * gpu_bytes
        where = f"{BUDGET_FRACTION:.0%} of the {gpu_bytes / memory.GiB:.1f} GiB of {gpu_name}"
    else:
        raise UserError("--auto_fit 1: no GPU here to fit; give --gpu_memory GIB, the memory per GPU to plan for")
    found = candidates(args, world_size, has_gpu, peak_flops or PLANNING_PEAK_FLOPS)
    fixed = " ".join(f"{flag} {getattr(args, name)}" for name, flag in
                     zip(OPEN_FLAGS, ("-b", "-r", "-z", "--offload")) if getattr(args, name) is not None)
    host, local_ranks = host_budget(args), min(world_size, local_ranks or world_size)
    host_fits = lambda c: c.run.offload == "none" or local_ranks * memory.host_estimate(c.run) <= host
    fitting = sorted((c for c in found if c.gpu_bytes <= budget and host_fits(c)), key=lambda c: c.step_seconds)
    gib = lambda c: f"{c.gpu_bytes / memory.GiB:.1f} GiB"
    if not fitting:
        smallest = min(found, key=lambda c: c.gpu_bytes)
        host_note = ""
        if smallest.gpu_bytes <= budget:  # it fits the GPU: the host is what is short
            host_note = (f" and {local_ranks} x {memory.host_estimate(smallest.run) / memory.GiB:.1f} GiB of host memory, "
                         f"more than the {host / memory.GiB:.1f} GiB usable (--host_memory)")
        raise UserError(f"--auto_fit 1: no setting{' with ' + fixed if fixed else ''} fits in {budget / memory.GiB:.1f} GiB "
                        f"({where}); the smallest, {smallest.flags()}, needs {gib(smallest)} per GPU{host_note}")
    best = fitting[0]
    tokens_per_s = lambda c: c.run.total_batch_size / c.step_seconds
    say(f"auto_fit: {best.flags()} (estimated {gib(best)} of {budget / memory.GiB:.1f} GiB, {where}; "
        f"gradient accumulation {best.run.grad_accum}) is the fastest setting that fits, out of {len(found)}"
        f"{' with ' + fixed if fixed else ''}")
    # the faster settings that came closest to fitting: what more memory would buy
    faster = sorted((c for c in found if c.step_seconds < best.step_seconds), key=lambda c: c.gpu_bytes)[:3]
    for c in faster:
        say(f"auto_fit:   faster but too big: {c.flags()} needs {gib(c)} ({best.step_seconds / c.step_seconds:.2f}x "
            "faster by the model)")
    for c in fitting[1:3]:
        say(f"auto_fit:   fits, slower: {c.flags()} {gib(c)} ({c.step_seconds / best.step_seconds:.2f}x the step time)")
    if best.run.offload != "none":
        say(f"auto_fit: host memory per rank (estimate): {memory.host_estimate(best.run) / memory.GiB:.1f} GiB, "
            f"{local_ranks} rank(s) on this node, {host / memory.GiB:.1f} GiB usable")
    say(f"auto_fit: the speed model (ds_train/autofit.py, fitted on an H100) expects about {tokens_per_s(best):,.0f} "
        "tokens/s per GPU; the step lines show the real figure")
    return best.args
