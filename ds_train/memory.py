"""Memory: a per-GPU estimate for a run, from its settings alone (for --dry_run): model states by ZeRO stage,
activations by recompute level, the loss's working memory; and what each rank of a running engine holds
(rank_model_states, printed after the first step). An estimate to size a run before paying for it; the
README compares it with peaks measured on an H100.

Model states, bytes per parameter (N parameters, W ranks):
  bf16 weights 2 (ZeRO-3: /W); gradients accumulated in fp32, 4 (ZeRO-2/3: /W); fp32 master weights 4 and
  AdamW's two moments 8 (ZeRO 1-3: /W). Under ZeRO-1 the module's bf16 gradients, 2, exist only from a
  backward to their fold into the fp32 ones (update.fold_bf16_gradients_in_one_kernel): they fill up as the
  activations are freed, so they count only where they outgrow the activations and the loss's working memory,
  which happens late in backward at -r 3 (its block inputs then counted whole, an upper bound). The blocks'
  linear weights get none (ds_train.weight_grad: their matmuls add into the fp32 ones), 24 C^2 bytes a block
  fewer (d48: 2.7 GiB). Counted, they had put d48's -r 3 estimate 2.3 GiB above the H200's peaks, 30.02 GiB before
  weight_grad (2026-12-03) and 29.83 after (2026-12-05): the peak came before all of them were held even then.
  fp32 runs: weights 4, gradients 4, AdamW 8, and under ZeRO a separate fp32 partition, 4/W. ZeRO-3 adds
  its gather and reduce buffers (ZERO3_BUFFERS, measured).
  --offload optimizer moves the master weights, the moments and the fp32 gradients to the host (offloaded()),
  leaving the module's gradients (a second copy with accumulation); --offload all also the weights, leaving
  what is gathered at a time. host_estimate() sizes a rank's host memory for auto_fit.
Activations kept for backward, per layer and token, in units of C values (bf16 or fp32): LayerNorm in/out
2+2, q/k/v 3, attention out 1, the MLP's 4C in and GELU'd 4C out 4+4: 16 without recompute; -r 1 drops the
GELU output, 4 (12; d12 at B=64 peaked 4.50 GiB lower on an H200: 4.0 C);
-r 2 also the LayerNorm outputs (10), -r 3 keeps each block's input only (1), plus one block's 16 while it is
recomputed. Flash attention keeps no T x T matrix.
The loss (ds_train.loss) never holds the whole logits: one chunk of at most CHUNK_ROWS rows at a time, in bf16
with its gradient written over it on a GPU (2 bytes per row and vocab entry; fp32 runs take the eager path,
about 12), plus the fp32 weight-gradient accumulator (vocab x C x 4) and the input gradient (tokens x C).
"""

import contextlib
import re

import torch

from ds_train.config import OFFLOAD_LEVELS, RunConfig
from ds_train.distributed import all_gather_values
from ds_train.errors import UserError
from ds_train.loss import CHUNK_ROWS

GiB = 2**30
ZERO3_BUFFERS = int(1.3 * GiB)


def estimate(run: RunConfig) -> list:
    """[(what, bytes)] per GPU for one micro-batch of `run`; the last entry is the total."""
    N, W, stage, m = run.model.num_params, run.world_size, run.zero_stage, run.model
    shard = lambda bytes_per_param, from_stage: bytes_per_param * N / (W if stage >= from_stage else 1)
    offload_optimizer, offload_params = OFFLOAD_LEVELS[run.offload]
    if run.bf16:
        weights, grads = shard(2, 3), shard(4, 2)
        optimizer = shard(12, 1)
    else:
        weights, grads = shard(4, 3), shard(4, 2)
        optimizer = shard(12, 1) if stage > 0 else 8 * N
    value = 2 if run.bf16 else 4
    if offload_optimizer:  # the fp32 gradient partition goes to CPU memory with the optimizer; the module's own
        # gradients stay on the GPU until they are reduced and copied out, and with accumulation DeepSpeed keeps
        # a second copy that it accumulates into (gpt3:c2560 B=8 x 8 micro-steps measured 2N above 1 copy)
        optimizer, grads = 0, value * N * (2 if run.grad_accum > 1 else 1)
    if offload_params:  # only what is gathered stays on the GPU: the block at work and the next one (prefetched)
        # or the embedding, with their gradients until they are copied out
        working_set = value * max(2 * m.block_params, m.padded_vocab_size * m.n_embd)
        weights, grads = working_set, working_set if offload_optimizer else grads
    tokens = run.B * run.T
    per_layer = {0: 16, 1: 12, 2: 10, 3: 1}[run.recompute]
    layers = (m.n_layer * per_layer + (16 if run.recompute == 3 else 0) + 3) * tokens * m.n_embd * value
    chunk = min(tokens, CHUNK_ROWS) * m.padded_vocab_size * (2 if run.bf16 else 12)
    loss = chunk + 4 * m.padded_vocab_size * m.n_embd + tokens * m.n_embd * value
    parts = [("weights", weights), ("gradients", grads), ("optimizer (fp32 master + AdamW)", optimizer),
             ("activations", layers), ("loss (chunked logits)", loss)]
    if run.bf16 and stage == 1 and not offload_optimizer:  # BF16_Optimizer's module gradients late in backward,
        # but for the blocks' four linear weights (12 C^2 parameters a block), whose matmuls write the fp32 ones
        bf16_grads = 2 * (N - 12 * m.n_layer * m.n_embd ** 2)
        beyond = bf16_grads + (layers if run.recompute == 3 else 0) - layers - loss
        if beyond > 0:
            parts.append(("bf16 gradients beyond the activations", beyond))
    if stage == 3:  # its gather, prefetch and reduce buffers: 1.3 GiB more than the rest at d12 on an H100
        parts.append(("ZeRO-3 buffers", ZERO3_BUFFERS))
    return parts + [("total", sum(size for _, size in parts))]


def offloaded(run: RunConfig) -> int:
    """Bytes per rank that --offload keeps in CPU memory (or on NVMe): the optimizer's partition (fp32 master
    weights, AdamW's moments, the fp32 gradients: 16 bytes per parameter) and the parameters' (2 in bf16)."""
    offload_optimizer, offload_params = OFFLOAD_LEVELS[run.offload]
    per_param = 16 * offload_optimizer + (2 if run.bf16 else 4) * offload_params
    return per_param * run.model.num_params // run.world_size


HOST_BASE = 5 * GiB  # a rank's own host memory before offload: CUDA context, torch, data (d48: 6.7 GiB peak)


def host_estimate(run: RunConfig) -> int:
    """Peak host memory of one rank: the model built in fp32 before the engine takes it (4 bytes per
    parameter), what --offload keeps there and its pinned staging (x 1.2), and HOST_BASE. Measured on the
    H100 machine: d48 34.0 / 43.9 GiB (optimizer / all), gpt3:c2560 62.4 GiB; gpt3:c4096 passed 122.9 GiB
    and was killed on that 125 GiB machine."""
    return int(1.2 * offloaded(run) + 4 * run.model.num_params + HOST_BASE)


def rank_model_states(engine) -> tuple:
    """(weights, fp32 master weights + AdamW moments) in bytes that this rank holds, as DeepSpeed partitioned
    them, and the optimizer's own (partitioned) parameters and state. At ZeRO-0 in fp32 the module's weights
    are the master weights, counted in both. The moments exist from the first step on."""

    def held(p):  # under ZeRO-3 a parameter's shard (ds_tensor), plus the whole tensor for the small ones below
        # stage3_param_persistence_threshold, which stay gathered (others are gathered only while in use)
        if not hasattr(p, "ds_tensor"):
            return p.numel() * p.element_size()
        persistent = p.ds_numel * p.element_size() if getattr(p, "ds_persist", False) else 0
        return p.ds_tensor.numel() * p.ds_tensor.element_size() + persistent

    weights = sum(held(p) for p in engine.module.parameters())
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)  # the AdamW inside ZeRO's wrapper
    # the master weights are the parameters the inner optimizer keeps state for (ZeRO-3 takes them out of its
    # param_groups between steps)
    master_params = {id(p): p for p in inner.state} | {id(p): p for g in inner.param_groups for p in g["params"]}
    masters = sum(p.numel() * p.element_size() for p in master_params.values())
    moments = sum(t.numel() * t.element_size() for state in inner.state.values() for t in state.values()
                  if torch.is_tensor(t) and t.dim() > 0)  # not the step counters
    return weights, masters + moments


def rank_model_states_line(engine) -> str:
    """What each rank holds, gathered on every rank: llm.c prints its allocations, ZeRO makes them per rank."""
    per_rank = all_gather_values(list(rank_model_states(engine)), engine.device)
    mib = lambda column: " | ".join(f"{sizes[column] / 2**20:.2f}" for sizes in per_rank)
    where = lambda offloaded: " (offloaded)" if offloaded else ""
    return (f"model states per rank (MiB, rank 0 | 1 | ...): weights {mib(0)}{where(engine.zero_offload_param())}; "
            f"fp32 master + AdamW {mib(1)}{where(engine.zero_offload_optimizer())}")


# torch's CPU allocator raises a plain RuntimeError (a CUDA allocation, torch.OutOfMemoryError, a subclass of it) when
# the kernel refuses memory, which it does at once for a request beyond what the machine has (or under a ulimit -v)
_HOST_ALLOCATION_FAILED = re.compile(r"DefaultCPUAllocator: can't allocate memory: you tried to allocate (\d+) bytes")


@contextlib.contextmanager
def explain_out_of_memory(run: RunConfig, doing: str, model_states: bool = False):
    """An allocation that fails while `doing` (building the engine, step 5, ...) ends the run with one line that says
    where, how much, and what to change, instead of torch's traceback: what to change depends on whether the model's
    states (`model_states`: weights, gradients, optimizer) or a step's activations did not fit. It is a UserError
    (exit status 2): the same settings run out the same way, so the scripts' resume loop stops instead of retrying."""
    try:
        yield
    except RuntimeError as e:
        if not (isinstance(e, torch.OutOfMemoryError) or _HOST_ALLOCATION_FAILED.search(str(e))):
            raise
        raise UserError(out_of_memory_line(run, doing, e, model_states)) from None


def out_of_memory_line(run: RunConfig, doing: str, error: Exception, model_states: bool) -> str:
    settings = (f"-e {run.init}, {run.model.num_params / 1e6:.0f}M parameters, -b {run.B} -t {run.T} -r "
                f"{run.recompute}, ZeRO-{run.zero_stage} over {run.world_size} rank{'s' if run.world_size > 1 else ''}"
                + (f", --offload {run.offload}" if run.offload != "none" else ""))
    if isinstance(error, torch.OutOfMemoryError):
        asked = re.search(r"Tried to allocate ([\d.]+ [KMGT]?i?B)", str(error))
        device = torch.cuda.current_device()
        total = torch.cuda.get_device_properties(device).total_memory
        gpu = f"a {total / GiB:.2f} GiB GPU"
        if (fraction := torch.cuda.get_per_process_memory_fraction(device)) < 1:  # capped by whoever started us
            gpu = f"the {fraction * total / GiB:.2f} GiB this process may use of {gpu}"
        levers = ("a higher ZeRO stage with more GPUs, or --offload" if model_states else
                  "a smaller -b (gradient accumulation keeps -d), a higher -r, a higher ZeRO stage or --offload")
        return (f"out of GPU memory while {doing}" + (f": {asked.group(1)} more" if asked else "")
                + f" on top of a peak of {torch.cuda.max_memory_allocated(device) / GiB:.2f} GiB allocated, "
                f"{'of' if fraction < 1 else 'on'} {gpu} ({settings}; the --dry_run estimate: "
                f"{estimate(run)[-1][1] / GiB:.2f} GiB); try {levers}, or --auto_fit 1 to choose (README: Memory)")
    asked = int(_HOST_ALLOCATION_FAILED.search(str(error)).group(1))
    if model_states:  # the model is built in fp32 on the host before the engine takes it
        levers = (f"a smaller model, or a machine with more memory than its {4 * run.model.num_params / GiB:.2f} GiB "
                  "of fp32 weights and what its optimizer keeps here")
    else:
        levers = "a smaller -b (gradient accumulation keeps -d) or a higher -r"
    return (f"out of host memory while {doing}: {asked / GiB:.2f} GiB more could not be allocated ({settings}); "
            f"try {levers}" + (", or less --offload" if run.offload != "none" else ""))
