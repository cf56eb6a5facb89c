"""Recompute levels 1 and 2 (llm.c's -r): forward values dropped after use and computed again in backward.

Level 1 drops GELU's output (ds_train.gelu_fusion's MLP keeps GELU's input). Level 2 also drops the two
LayerNorm outputs of each block: each is read only by the linear after it (c_attn, or the MLP's c_fc), which
keeps it for its weight gradient, so the LayerNorm and that linear are one autograd Function keeping the
LayerNorm's input instead, which the LayerNorm's own backward keeps anyway. Each is one elementwise pass in
backward (with a row reduction for LayerNorm); no matmul runs twice.

The recomputation is a custom op, opaque to torch.compile: traced as plain ops, the compiler's
common-subexpression elimination merged it with the same ops in forward and then kept the forward's output
for backward, so that compiled recompute saved no memory. Eagerly the recomputed values are the forward's bit
for bit (the same kernels on the same input).
"""

import torch
import torch.nn.functional as F

from ds_train import weight_grad


def layer_norm(x, weight, bias, eps: float):
    """(output, mean, rstd) of LayerNorm over x's last dimension, as nn.LayerNorm computes it."""
    return torch.native_layer_norm(x, (x.shape[-1],), weight, bias, eps)


@torch.library.custom_op("ds_train::layer_norm_again", mutates_args=())
def layer_norm_again(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """layer_norm in backward, from the input forward kept."""
    return layer_norm(x, weight, bias, eps)


@layer_norm_again.register_fake
def _(x, weight, bias, eps):
    return layer_norm(x, weight, bias, eps)


def layer_norm_backward(grad_out, x, weight, bias, mean, rstd):
    """(grad at x, grad at weight, grad at bias) of layer_norm, as autograd computes them."""
    return torch.ops.aten.native_layer_norm_backward(grad_out, x, (x.shape[-1],), mean, rstd, weight, bias,
                                                     (True, True, True))


def gelu(pre_gelu):
    """The MLP's GELU (tanh approximation, as GPT-2's)."""
    return F.gelu(pre_gelu, approximate="tanh")


@torch.library.custom_op("ds_train::gelu_again", mutates_args=())
def gelu_again(pre_gelu: torch.Tensor) -> torch.Tensor:
    """gelu in backward, from the input forward kept."""
    return gelu(pre_gelu)


@gelu_again.register_fake
def _(pre_gelu):
    return torch.empty_like(pre_gelu)


class NormLinear(torch.autograd.Function):
    """linear(layer_norm(x)) for 2-D x, keeping x (not the normalized x) for backward; the weight's gradient
    into main_grad if given (ds_train.weight_grad)."""

    @staticmethod
    def forward(ctx, x, norm_weight, norm_bias, eps: float, weight, bias, main_grad):
        ctx.eps, ctx.main_grad = eps, main_grad
        ctx.save_for_backward(x, norm_weight, norm_bias, weight)
        return F.linear(layer_norm(x, norm_weight, norm_bias, eps)[0], weight, bias)

    @staticmethod
    def backward(ctx, grad_y):
        x, norm_weight, norm_bias, weight = ctx.saved_tensors
        x_norm, mean, rstd = layer_norm_again(x, norm_weight, norm_bias, ctx.eps)
        grad_x, grad_norm_weight, grad_norm_bias = layer_norm_backward(grad_y @ weight, x, norm_weight, norm_bias,
                                                                       mean, rstd)
        return (grad_x, grad_norm_weight, grad_norm_bias, None, weight_grad.weight_grad(grad_y, x_norm, ctx.main_grad),
                grad_y.sum(0), None)


def norm_linear(x, norm: torch.nn.LayerNorm, linear: torch.nn.Linear):
    """linear(norm(x)) on x (..., C), the LayerNorm's output computed again in backward (-r 2)."""
    y = NormLinear.apply(x.reshape(-1, x.shape[-1]), norm.weight, norm.bias, norm.eps, linear.weight, linear.bias,
                         weight_grad.main_grad_of(linear))
    return y.view(*x.shape[:-1], y.shape[-1])
