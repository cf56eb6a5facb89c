"""The MLP's GELU fused into cuBLASLt matmul epilogues on CUDA (llm.c's -ge), and recomputed in backward (-r 1, 2).

Unfused, GELU is a pass of its own over the (B*T, 4C) activations in each direction: forward reads the first
matmul's output and writes GELU's; backward reads the gradient and GELU's input and writes the gradient at
that input. Fused (ds_train/csrc/gelu_matmul.cpp, JIT-built by torch's C++ extension tools on first use),
level 1 applies GELU as the first matmul writes its result (keeping GELU's input for backward), and level 2
also multiplies by GELU's derivative as the backward matmul of the second linear writes its result.
`bench/gelu_epilogue.py` times both against the unfused kernels.

Recompute level 1 (-r 1) keeps only GELU's input for backward, where GELU's output is computed again for the
second linear's weight gradient, the one place backward needs it: one elementwise pass, as llm.c's -r 1 does.
The fused epilogues stay on, so recompute costs that pass and nothing else. -r 2 does the same and also
normalizes the MLP's input again in backward (ds_train.recompute).

The two operations are torch custom ops, so torch.compile keeps them whole in a block's graph. Their CPU
kernels are the same arithmetic done unfused: what the tests check the fused MLP's gradients against.
"""

import functools
import os

import torch
import torch.nn.functional as F

from ds_train import recompute, weight_grad

SOURCE = os.path.join(os.path.dirname(__file__), "csrc", "gelu_matmul.cpp")
LEVELS = {0: "none", 1: "forward", 2: "forward + backward"}


@functools.cache
def extension():
    from torch.utils.cpp_extension import load
    return load(name="ds_train_gelu_matmul", sources=[SOURCE], extra_ldflags=["-lcublasLt"], with_cuda=True)


def build_error() -> str | None:
    """None once the extension is built and loaded, else why it could not be (the compiler's last line)."""
    try:
        extension()
    except Exception as e:  # a missing compiler, header or library: the build's own message says which
        return (str(e).strip().splitlines() or [type(e).__name__])[-1]
    return None


def _unfused_linear_gelu(x, weight, bias):
    """(gelu(x @ weight.T + bias), x @ weight.T + bias) as two kernels: a matmul, then GELU."""
    pre_gelu = F.linear(x, weight, bias)
    return recompute.gelu(pre_gelu), pre_gelu


@torch.library.custom_op("ds_train::linear_gelu", mutates_args=())
def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(gelu(x @ weight.T + bias), x @ weight.T + bias) for 2-D x: on CUDA one cuBLASLt matmul writes both."""
    if x.is_cuda:
        out, pre_gelu = extension().linear_gelu(x, weight, bias)
        return out, pre_gelu
    return _unfused_linear_gelu(x, weight, bias)


@linear_gelu.register_fake
def _(x, weight, bias):
    out = x.new_empty(x.shape[0], weight.shape[0])
    return out, torch.empty_like(out)


def _unfused_gelu_backward(grad_out, weight, pre_gelu):
    """(grad_out @ weight) * gelu'(pre_gelu) as two kernels: a matmul, then GELU's backward."""
    return torch.ops.aten.gelu_backward(grad_out @ weight, pre_gelu, approximate="tanh")


@torch.library.custom_op("ds_train::matmul_gelu_backward", mutates_args=())
def matmul_gelu_backward(grad_out: torch.Tensor, weight: torch.Tensor, pre_gelu: torch.Tensor) -> torch.Tensor:
    """(grad_out @ weight) * gelu'(pre_gelu): from the gradient at the second linear's output to the gradient
    at GELU's input; on CUDA one cuBLASLt matmul."""
    if grad_out.is_cuda:
        return extension().matmul_gelu_backward(grad_out, weight, pre_gelu, False)[0]
    return _unfused_gelu_backward(grad_out, weight, pre_gelu)


@matmul_gelu_backward.register_fake
def _(grad_out, weight, pre_gelu):
    return torch.empty_like(pre_gelu)


@torch.library.custom_op("ds_train::column_sum", mutates_args=())
def column_sum(grad: torch.Tensor) -> torch.Tensor:
    """grad.sum(0) for 2-D grad, the bias gradient at GELU's input under level 2. There grad comes from the fused
    backward's matmul, which Inductor cannot see into, so Inductor gave the sum a kernel of its own, and on d48's
    shapes (16384 x 6400) that kernel took 1.5 times as long as cuBLAS's matrix-vector product ones @ grad
    (bench/bias_grad.py). On CUDA this is that product, with fp32 sums and one rounding, as the sum has."""
    if grad.is_cuda:
        ones = torch.ones(1, grad.shape[0], device=grad.device, dtype=grad.dtype)
        return torch.mm(ones, grad, out_dtype=torch.float32).view(-1).to(grad.dtype)
    return grad.sum(0)


@column_sum.register_fake
def _(grad):
    return grad.new_empty(grad.shape[1])


class GeluMLP(torch.autograd.Function):
    """linear(gelu(linear(x, w_fc, b_fc)), w_proj, b_proj) for 2-D x, GELU fused at `level` (0 none, 1, 2), after
    a LayerNorm given its weight and bias (-r 2), else on x as it is. Without recompute it saves what autograd
    saves unfused (x, GELU's input and output, the weights), so memory does not change; with it, GELU's output
    is not kept, and with the LayerNorm its output is not kept either (ds_train.recompute). The bias
    gradients are sums (at level 2 the first by cuBLAS, column_sum): cuBLASLt's own bias-gradient epilogue
    (DGELU_BGRAD) measured slower than the matmul and the sum. Given fp32 accumulators for the weights
    (main_fc, main_proj; ds_train.weight_grad), their gradients go there."""

    @staticmethod
    def forward(ctx, x, norm_weight, norm_bias, norm_eps, w_fc, b_fc, w_proj, b_proj, level: int, drop_gelu: bool,
                main_fc, main_proj):
        x_norm = x if norm_weight is None else recompute.layer_norm(x, norm_weight, norm_bias, norm_eps)[0]
        h, pre_gelu = (linear_gelu if level else _unfused_linear_gelu)(x_norm, w_fc, b_fc)
        ctx.level, ctx.norm_eps, ctx.main_fc, ctx.main_proj = level, norm_eps, main_fc, main_proj
        ctx.save_for_backward(x, pre_gelu, None if drop_gelu else h, w_fc, w_proj, norm_weight, norm_bias)
        return F.linear(h, w_proj, b_proj)

    @staticmethod
    def backward(ctx, grad_y):
        x, pre_gelu, h, w_fc, w_proj, norm_weight, norm_bias = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        if ctx.level == 2:
            grad_pre = matmul_gelu_backward(grad_y, w_proj, pre_gelu)
            grad_b_fc = column_sum(grad_pre)
        else:
            grad_pre = _unfused_gelu_backward(grad_y, w_proj, pre_gelu)
            grad_b_fc = grad_pre.sum(0)
        if h is None:  # -r 1, 2: GELU's output again, for the second linear's weight gradient
            h = recompute.gelu_again(pre_gelu)
        grad_x_norm = grad_pre @ w_fc
        if norm_weight is None:
            grad_x, grad_norm_weight, grad_norm_bias, x_norm = grad_x_norm, None, None, x
        else:  # -r 2: the LayerNorm's output again, for the first linear's weight gradient
            x_norm, mean, rstd = recompute.layer_norm_again(x, norm_weight, norm_bias, ctx.norm_eps)
            grad_x, grad_norm_weight, grad_norm_bias = recompute.layer_norm_backward(
                grad_x_norm, x, norm_weight, norm_bias, mean, rstd)
        return (grad_x, grad_norm_weight, grad_norm_bias, None, weight_grad.weight_grad(grad_pre, x_norm, ctx.main_fc),
                grad_b_fc, weight_grad.weight_grad(grad_y, h, ctx.main_proj), grad_y.sum(0), None, None, None, None)


def mlp(x, c_fc: torch.nn.Linear, c_proj: torch.nn.Linear, level: int, drop_gelu: bool = False,
        norm: torch.nn.LayerNorm | None = None):
    """The MLP of a block on x (..., C) with GELU fused at `level` (0-2), GELU's output recomputed in backward if
    `drop_gelu`; given the LayerNorm before it, on norm(x), normalized again in backward (-r 2)."""
    norm_args = (None, None, 0.0) if norm is None else (norm.weight, norm.bias, norm.eps)
    y = GeluMLP.apply(x.reshape(-1, x.shape[-1]), *norm_args, c_fc.weight, c_fc.bias, c_proj.weight, c_proj.bias,
                      level, drop_gelu, weight_grad.main_grad_of(c_fc), weight_grad.main_grad_of(c_proj))
    return y.view(*x.shape[:-1], y.shape[-1])
