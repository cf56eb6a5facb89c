"""The blocks' weight gradients added into DeepSpeed's fp32 accumulators by the matmuls that compute them.

Under bf16 ZeRO-1 DeepSpeed (its BF16_Optimizer) accumulates each parameter's gradient in fp32: autograd
writes each micro-step's gradient in bf16, and after the backward ds_train folds it into the fp32 accumulator
(update.fold_bf16_gradients_in_one_kernel): d48 reads 10 bytes per weight a micro-step there, 33 ms of its step
on an H200. Here the weight-gradient matmul of each of a block's four linears adds its product into the fp32
accumulator itself instead (on a GPU cuBLAS with an fp32 output and beta = 1, as the head's weight gradient
within a micro-step; Megatron's gradient-accumulation fusion), and autograd gets no bf16 gradient for those
weights at all. The sums are more exact than the fold's: a micro-step's product is no longer rounded to bf16
before it is added.

`attach` gives each such weight a `main_grad` (Megatron's name): its fp32 accumulator, a view of DeepSpeed's
flat gradient buffer in the weight's shape. The block's autograd Functions (`Linear` here, gelu_fusion.GeluMLP,
recompute.NormLinear) take it as an input and keep it on their ctx, not among the saved tensors: all the
accumulators are views of one buffer, so each backward's add would count as a change to the tensors that the
later backwards saved, and autograd would refuse them.
"""

import torch
import torch.nn.functional as F

LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # a block's linears, by module path


@torch.library.custom_op("ds_train::accumulate_weight_grad", mutates_args=("main_grad",))
def accumulate_weight_grad(main_grad: torch.Tensor, grad_out: torch.Tensor, x: torch.Tensor) -> None:
    """main_grad (float32, out x in) += grad_out.T @ x for 2-D bf16 grad_out (rows, out) and x (rows, in)."""
    if main_grad.is_cuda:  # cuBLAS reads the accumulator in its epilogue and writes the fp32 sum back
        torch.addmm(main_grad, grad_out.t(), x, out_dtype=torch.float32, out=main_grad)
    else:  # the same sum: a product of two bf16 values is exact in fp32
        main_grad.addmm_(grad_out.t().float(), x.float())


@accumulate_weight_grad.register_fake
def _(main_grad, grad_out, x):
    return None


def weight_grad(grad_out, x, main_grad):
    """The gradient at a linear's weight, grad_out.T @ x (2-D), or with an fp32 accumulator main_grad, added into
    it and None (autograd then gives the weight no gradient)."""
    if main_grad is None:
        return grad_out.t() @ x
    accumulate_weight_grad(main_grad, grad_out, x)
    return None


def main_grad_of(layer: torch.nn.Linear):
    """The weight's fp32 accumulator where `attach` gave it one and a backward will follow, else None."""
    main_grad = getattr(layer.weight, "main_grad", None)
    return main_grad if main_grad is not None and torch.is_grad_enabled() else None


class Linear(torch.autograd.Function):
    """F.linear for 2-D x, the weight's gradient added into main_grad."""

    @staticmethod
    def forward(ctx, x, weight, bias, main_grad):
        ctx.save_for_backward(x, weight)
        ctx.main_grad = main_grad  # not saved: see the module's docstring
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        return grad_y @ weight, weight_grad(grad_y, x, ctx.main_grad), grad_y.sum(0), None


def linear(x, layer: torch.nn.Linear):
    """layer(x) on x (..., in), its weight's gradient into the weight's main_grad where it has one."""
    main_grad = main_grad_of(layer)
    if main_grad is None:
        return layer(x)
    y = Linear.apply(x.reshape(-1, x.shape[-1]), layer.weight, layer.bias, main_grad)
    return y.view(*x.shape[:-1], y.shape[-1])


def attach(optimizer, model) -> int:
    """Give each block linear's weight its fp32 accumulator as main_grad where DeepSpeed keeps one per parameter
    that ds_train's fold can stand in for (BF16_Optimizer: bf16 at ZeRO-1, fp32 accumulation on the weights'
    device, no expert parallelism, gradients not folded in their hooks); -> how many weights got one."""
    names = ("bf16_groups", "fp32_groups_gradients", "immediate_grad_update", "autoep_folding_tp_group")
    if type(optimizer).__name__ != "BF16_Optimizer" or not all(hasattr(optimizer, n) for n in names) \
            or optimizer.immediate_grad_update or optimizer.autoep_folding_tp_group is not None:
        return 0
    accumulator = {id(lp): hp for lps, hps in zip(optimizer.bf16_groups, optimizer.fp32_groups_gradients)
                   for lp, hp in zip(lps, hps)}
    attached = 0
    for block in model.transformer.h:
        for path in LINEARS:
            weight = block.get_submodule(path).weight
            hp = accumulator.get(id(weight))
            if hp is None or hp.dtype != torch.float32 or hp.device != weight.device or hp.numel() != weight.numel():
                continue
            weight.main_grad = hp.view(weight.shape)
            attached += 1
    return attached
