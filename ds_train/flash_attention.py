"""Causal attention straight from the fused q/k/v projection, with FlashAttention-4's Hopper kernels on CUDA.

SDPA wants q, k and v as (B, H, T, D) and hands back their gradients as three separate tensors, which autograd
then interleaves into the (B, T, 3C) gradient of the c_attn matmul: a copy of that gradient every layer and
micro-step. FlashAttention-4 (the `flash-attn-4` package, its CuTe DSL kernels; `bash scripts/setup.sh --gpu`
installs it) reads q, k and v as strided (B, T, H, D) views of the projection's output and writes their
gradients into strided views of one (B, T, 3, H, D) buffer, so the copy goes away, and on Hopper its kernels
are FlashAttention-3's design. `bench/attention_kernels.py` times it against SDPA; in the trainer it gave d12
3.1%, d24 2.2% and d48 1.4% more tokens/s on an H200 (README, Performance). On Hopper the forward is cuDNN's
(through PyTorch's op for SDPA's cuDNN backend), whose kernel ran 22-24% faster than FlashAttention-4's on d12's,
d24's and d48's shapes, and FlashAttention-4's backward takes its output and log-sum-exp as from its own forward
(`bench/attention_mix.py`): the faster kernel of each direction.

Both directions are torch custom ops, so torch.compile keeps each whole in a block's graph. Their CPU kernels
are the same arithmetic written out (scores, log-sum-exp, the softmax gradient): what the tests check the
wiring against SDPA with, on machines without the kernels.
"""

import contextlib
import functools
import math
import sys
import warnings

import torch

MIN_CAPABILITY = (9, 0)  # FlashAttention-4's kernels are for Hopper (sm90) and Blackwell
LEVELS = {0: "SDPA", 1: "FlashAttention-4"}


@functools.cache
def _kernels():
    from flash_attn.cute import interface
    if not (hasattr(interface, "_flash_attn_fwd") and hasattr(interface, "_flash_attn_bwd")):
        raise ImportError("flash_attn.cute.interface lacks _flash_attn_fwd/_flash_attn_bwd (flash-attn-4 too old?)")
    return interface


@contextlib.contextmanager
def _kernel_call():
    """Around each call into FlashAttention-4. Each time the CuTe DSL compiles a kernel it parses sys.argv for
    a flag of its own, -diagnostic, with argparse's prefix matching, so llm.c's -d 524288 reads as an invalid
    -diagnostic and ends the run: it sees the program name only. And it warns, per compiled kernel, about
    an argument it leaves to Python (FlashAttention's aux_data, unused here)."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Argument aux_data", category=UserWarning)
            yield
    finally:
        sys.argv = argv


@functools.cache
def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def unsupported_gpu_reason() -> str | None:
    """None if this machine's GPU is one FlashAttention-4's kernels are for, else why not (one line)."""
    if not torch.cuda.is_available():
        return "it needs a CUDA GPU"
    capability = torch.cuda.get_device_capability()
    if capability < MIN_CAPABILITY:
        return f"it needs a Hopper or newer GPU (compute capability 9.0+), this one is {capability[0]}.{capability[1]}"
    return None


def unavailable_reason() -> str | None:
    """None if FlashAttention-4 can run here (the GPU and the package), else why not (one line)."""
    if reason := unsupported_gpu_reason():
        return reason
    try:
        _kernels()
    except Exception as e:  # not installed, or a part of it (the CuTe DSL, its CUDA libraries) missing
        return f"the flash-attn-4 package does not import ({(str(e).strip().splitlines() or [type(e).__name__])[0]})"
    return None


def cudnn_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """cuDNN's causal attention forward of (B, T, H, D) q, k, v on Hopper -> (out (B, T, H, D), lse (B, H, T) float32,
    the natural log-sum-exp of the scaled scores, as FlashAttention-4's forward gives them), or None where that is not
    the faster forward (Blackwell, FlashAttention-4's own target, was not measured) or PyTorch cannot run cuDNN's
    attention on these inputs."""
    if _capability(q.device)[0] != 9:
        return None
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D) views, as SDPA takes them
    if not torch.backends.cuda.can_use_cudnn_attention(torch.backends.cuda.SDPAParams(q, k, v, None, 0.0, True, False)):
        return None
    out, lse, *_ = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, True)
    return out.transpose(1, 2).contiguous(), lse.reshape(q.shape[:3]).contiguous()  # (B, H, T, 1) -> (B, H, T)


def flash_attention_4_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """FlashAttention-4's causal attention forward of (B, T, H, D) q, k, v -> (out (B, T, H, D), lse (B, H, T))."""
    with _kernel_call():
        out, lse, *_ = _kernels()._flash_attn_fwd(q, k, v, causal=True, return_lse=True,
                                                  tile_mn=forward_tile_mn(q.shape[1], q.shape[-1], _capability(q.device)))
    return out, lse


def forward_tile_mn(T: int, head_dim: int, capability: tuple[int, int]) -> tuple[int, int] | None:
    """The forward kernel's tile shape (query rows, key columns), or None for flash-attn-4's own choice. On
    Hopper that is 192 x 128 for head size 64, tuned by its authors across sequence lengths; at T <= 1024
    128 x 128 ran the kernel 6.1-7.4% faster on an H200 for d12, d24 and d48 and at T=512 (each head's rows in
    whole blocks: at 1024 a 192-row tiling's sixth block holds 64 rows), and at T >= 1536 7-10% slower
    (`bench/attention_tiles.py`). The output is the same to the bit."""
    if capability[0] == 9 and head_dim <= 64 and T <= 1024:
        return 128, 128
    return None


def _causal_scores(q, k):
    """The scaled scores q·k/sqrt(D) (B, H, T, T) of (B, H, T, D) q and k, -inf where a key follows its query."""
    T = q.shape[2]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return scores.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))


def _reference_forward(q, k, v):
    """(out, lse) for (B, T, H, D) q, k, v: causal softmax attention in fp32, written out."""
    q, k, v = (t.transpose(1, 2).float() for t in (q, k, v))  # (B, H, T, D)
    scores = _causal_scores(q, k)
    lse = torch.logsumexp(scores, dim=-1)  # (B, H, T)
    out = torch.exp(scores - lse[..., None]) @ v
    return out, lse


@torch.library.custom_op("ds_train::flash_attention_qkv", mutates_args=())
def attention_qkv(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention for qkv (B, T, 3, H, D), the c_attn output viewed by head: (out (B, T, H, D),
    lse (B, H, T) float32, each query row's log-sum-exp of scaled scores, for backward)."""
    q, k, v = qkv.unbind(2)
    if qkv.is_cuda:
        return cudnn_forward(q, k, v) or flash_attention_4_forward(q, k, v)
    out, lse = _reference_forward(q, k, v)
    return out.transpose(1, 2).to(qkv.dtype).contiguous(), lse


@attention_qkv.register_fake
def _(qkv):
    B, T, _, H, D = qkv.shape
    return qkv.new_empty(B, T, H, D), qkv.new_empty(B, H, T, dtype=torch.float32)


@torch.library.custom_op("ds_train::flash_attention_qkv_backward", mutates_args=())
def attention_qkv_backward(qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                           grad_out: torch.Tensor) -> torch.Tensor:
    """The gradient at qkv (B, T, 3, H, D), from the gradient at out (B, T, H, D)."""
    grad_qkv = torch.empty_like(qkv, memory_format=torch.contiguous_format)
    q, k, v = qkv.unbind(2)
    if qkv.is_cuda:  # the kernels write dq, dk and dv straight into their slots of grad_qkv
        dq, dk, dv = grad_qkv.unbind(2)
        with _kernel_call():
            _kernels()._flash_attn_bwd(q, k, v, out, grad_out.contiguous(), lse, causal=True, dq=dq, dk=dk, dv=dv)
        return grad_qkv
    scale = 1 / math.sqrt(q.shape[-1])
    q, k, v, out, grad_out = (t.transpose(1, 2).float() for t in (q, k, v, out, grad_out))  # (B, H, T, D)
    probs = torch.exp(_causal_scores(q, k) - lse[..., None])  # exactly 0 above the diagonal (exp of -inf)
    grad_probs = grad_out @ v.transpose(-1, -2)
    grad_scores = probs * (grad_probs - (grad_out * out).sum(-1, keepdim=True))
    for i, grad in enumerate((grad_scores @ k * scale, grad_scores.transpose(-1, -2) @ q * scale,
                              probs.transpose(-1, -2) @ grad_out)):
        grad_qkv[:, :, i] = grad.transpose(1, 2)
    return grad_qkv


@attention_qkv_backward.register_fake
def _(qkv, out, lse, grad_out):
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], *output)
    ctx.mark_non_differentiable(output[1])  # lse is for backward only


def _backward(ctx, grad_out, grad_lse):
    qkv, out, lse = ctx.saved_tensors
    return attention_qkv_backward(qkv, out, lse, grad_out)


attention_qkv.register_autograd(_backward, setup_context=_setup_context)


def causal_attention(qkv: torch.Tensor, n_head: int) -> torch.Tensor:
    """Causal self-attention from the c_attn output qkv (B, T, 3C) to (B, T, C), as SDPA would give it."""
    B, T, C3 = qkv.shape
    out, _ = attention_qkv(qkv.view(B, T, 3, n_head, C3 // (3 * n_head)))
    return out.reshape(B, T, C3 // 3)
