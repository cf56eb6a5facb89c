"""One optimizer step on the DeepSpeed engine, with a guard that may skip the update (outliers.UpdateGuard).

The guard judges the step's loss and its grad norm before clipping, and the norm has to be known before the
update is applied. Without ZeRO, ds_train computes the norm itself between the last backward and the step.
Under ZeRO 1-3 DeepSpeed computes it inside engine.step(), right before the update, over each rank's
partition: `NormHook` wraps that computation so the guard sees the norm there. A veto hands DeepSpeed a NaN
norm, and DeepSpeed's own non-finite-norm path then drops the gradients, leaves the optimizer alone and
counts a skipped step.

The guard's decision is where ds_train's step waits for the GPU, once: the loss stays on the device until the
norm is known and both are read together, so the GPU's queue drains once a step, not for the loss and again for
the norm (DeepSpeed's own checks of the norm right after cost little more: the queue is empty by then); nothing
waits for the update, whose kernels the next step's forward queues behind.
"""

import math

import torch

from ds_train import distributed, grad_fold
from ds_train.errors import UserError


def grad_norm(module) -> float:
    grads = [p.grad.float() for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()


class NormHook:
    """Wraps the ZeRO optimizer's grad-norm computation; `verdict(norm)` may veto the update.

    DeepSpeed 0.19 picks one of three ZeRO optimizers: BF16_Optimizer for bf16 at ZeRO-1 with fp32 gradient
    accumulation (ds_train's bf16 default), DeepSpeedZeroOptimizer for the other ZeRO-1/2 runs, and
    DeepSpeedZeroOptimizer_Stage3. Each computes the norm in its own method; all three treat a non-finite
    norm as "skip this update".
    """

    def __init__(self, engine):
        from deepspeed.runtime.utils import combine_grad_norm_groups, get_global_norm_of_tensors

        optimizer = engine.optimizer
        kind = type(optimizer).__name__
        nan = math.nan
        # set by the caller before each engine.step(): verdict(loss, norm) -> why to skip or None, and the step's
        # loss as a tensor on the device (or None), read in the same transfer as the norm
        self.verdict, self.loss = None, None
        self.norm, self.loss_value, self.reason = None, None, None

        def judge(norm) -> bool:
            if self.loss is None:
                norm = float(norm)
            else:
                both = torch.stack([torch.as_tensor(norm, device=self.loss.device).reshape(()).float(),
                                    self.loss.reshape(()).float()])
                norm, self.loss_value = both.tolist()
            self.norm = norm if math.isfinite(norm) and norm >= 0 else nan  # DeepSpeed marks an inf/NaN norm -1
            self.reason = self.verdict(self.loss_value, self.norm)
            return self.reason is not None

        if kind == "DeepSpeedZeroOptimizer":
            name = "scaled_global_norm"
            # DeepSpeed takes one norm per parameter (d12: 148), a few small kernels each. Where the gradients of
            # the rank's partition sit in one flat buffer (bf16 with fp32 accumulation, ZeRO-2's usual case; the
            # padding there is zeros), DeepSpeed's own norm function takes that buffer as a single tensor
            # instead; the partition's first parameter stands for all of them in its checks, which concern
            # model and pipeline parallelism only (hence mpu None).
            deepspeed_norm = optimizer.get_grad_norm_direct
            if optimizer.mpu is None and not optimizer.has_moe_layers:
                def get_grad_norm_direct(gradients, params, norm_type=2):
                    flat = getattr(gradients, "flat_partition", None)
                    if flat is None or not params:
                        return deepspeed_norm(gradients, params, norm_type)
                    return deepspeed_norm([flat], params[:1], norm_type)
                optimizer.get_grad_norm_direct = get_grad_norm_direct

            def wrap(original):
                def scaled_global_norm(*args, **kwargs):
                    norm = original(*args, **kwargs)
                    if not judge(norm):
                        return norm
                    # DeepSpeed's skip path. It would take a NaN norm as an overflow by itself, except in bf16
                    # with its overflow scan off, as ds_train runs it (config.py)
                    optimizer.overflow = True
                    return torch.full_like(norm, nan)
                return scaled_global_norm

            # A skipped step (the guard's veto or DeepSpeed's own overflow scan) drops the step's flat gradient
            # partitions, except when the optimizer is offloaded (DeepSpeed 0.19.8): the next step's gradients
            # were then added to this one's, and after one NaN step every later step was skipped too. Dropped
            # after any skipped step here, as DeepSpeed does without offload.
            deepspeed_step = optimizer.step

            def step(*args, **kwargs):
                result = deepspeed_step(*args, **kwargs)
                if optimizer.overflow:
                    for group in list(optimizer.averaged_gradients):
                        optimizer.averaged_gradients[group] = None
                return result
            optimizer.step = step
        elif kind == "DeepSpeedZeroOptimizer_Stage3":
            name = "_get_norm_groups"

            def wrap(original):
                def get_norm_groups(*args, **kwargs):
                    groups = original(*args, **kwargs)
                    norm = combine_grad_norm_groups(groups)
                    return [torch.full_like(norm, nan)] if judge(norm) else groups
                return get_norm_groups
        elif kind == "BF16_Optimizer":
            name = "get_grads_for_norm"
            # BF16_Optimizer.step() asks for the gradients twice: to take their norm, then to clip them. It then
            # runs one small kernel per parameter each time (d48: 580 of them), and this wrapper's own norm added
            # as many again; after the norm's synchronization the GPU waits for each of the clip's launches. Here
            # the norm is one multi-tensor kernel and handed over as itself, a one-element tensor whose norm
            # DeepSpeed takes in a few kernels, and the clip scales each group's flat fp32 gradient buffer,
            # which holds every gradient (a parameter without one has zeros there), in one kernel per group.
            plain = (optimizer.mpu is None and optimizer.norm_type == 2 and not optimizer.has_moe_layers
                     and hasattr(optimizer, "fp32_groups_gradients_flat"))

            def wrap(original):
                def get_grads_for_norm(for_clipping=False):
                    if for_clipping:
                        return list(optimizer.fp32_groups_gradients_flat) if plain else original(for_clipping=True)
                    grads, expert_grads = original()
                    if plain:
                        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).reshape(1)
                    else:
                        norm = get_global_norm_of_tensors(grads, mpu=optimizer.mpu, norm_type=optimizer.norm_type)
                    if judge(norm):
                        return [torch.full((1,), nan, device=engine.device)], expert_grads
                    return ([norm], expert_grads) if plain else (grads, expert_grads)
                return get_grads_for_norm
        else:
            raise UserError(f"DeepSpeed chose the ZeRO optimizer {kind}, which ds_train's NaN guard and -sl/-sg do "
                            "not know; use the DeepSpeed of requirements.txt")
        setattr(optimizer, name, wrap(getattr(optimizer, name)))


def fold_bf16_gradients_in_one_kernel(optimizer):
    """Under BF16_Optimizer (bf16 at ZeRO-1) DeepSpeed adds each micro-step's bf16 gradient into the parameter's
    fp32 accumulator as two kernels: a float32 copy of the gradient, then the add. One mixed-precision add
    reads the bf16 gradient directly and gives the same fp32 sums (bf16 converts to fp32 exactly). For d48 on
    an H100 the copies were 61 ms of a 2742 ms step.

    The bf16 gradient is then released instead of kept: DeepSpeed zeroes it before the next backward, which
    then adds into the zeros, a memset and an add per parameter and micro-step (d48: 29 ms a step) that a
    fresh gradient skips, and it holds 2 bytes per parameter through the next forward (d48: 2.9 GiB).
    Nothing reads it after the fold: reduction, the norm, clipping and the step all use the fp32 one.

    On a GPU all of a micro-step's adds are one kernel launch (ds_train.grad_fold, the same sums): d12 had 148
    adds a micro-step, d48 580, each a launch and PyTorch's unvectorized mixed-dtype add.

    The blocks' linear weights whose matmuls accumulate into their fp32 accumulators themselves (a `main_grad`,
    ds_train.weight_grad) have no bf16 gradient to fold: each backward counts them as having a gradient.

    Other optimizers, and a DeepSpeed whose BF16_Optimizer keeps its accumulators elsewhere, are left as they
    are (the same arithmetic either way). -> whether the fold was installed (weight_grad.attach needs it: only
    this fold counts the weights without a bf16 gradient)."""
    names = ("_update_hp_grad", "update_hp_grads", "fp32_groups_gradients", "fp32_groups_has_gradients",
             "autoep_folding_tp_group", "immediate_grad_update", "bf16_groups")
    if type(optimizer).__name__ != "BF16_Optimizer" or not all(hasattr(optimizer, n) for n in names):
        return False
    deepspeed_fold = optimizer._update_hp_grad

    def accumulated_by_matmuls(lp) -> bool:  # ds_train.weight_grad's weights: in fp32 already, no bf16 gradient
        return lp.grad is None and getattr(lp, "main_grad", None) is not None

    def folded(lp, group_idx, param_idx, hp_grad):
        lp._hp_grad = hp_grad  # what DeepSpeed's fold records: the gradient's fp32 home, and that it has one
        optimizer.fp32_groups_has_gradients[group_idx][param_idx] = True
        lp.grad = None  # whether or not the caller asked to clear it: see above

    @torch.no_grad()
    def update_hp_grad(lp, group_idx, param_idx, clear_lp_grads):
        hp_grad = optimizer.fp32_groups_gradients[group_idx][param_idx]
        if accumulated_by_matmuls(lp):
            return folded(lp, group_idx, param_idx, hp_grad)
        if lp.grad is None or optimizer.autoep_folding_tp_group is not None:  # expert parallelism: DeepSpeed's own
            return deepspeed_fold(lp, group_idx, param_idx, clear_lp_grads)
        hp_grad.add_(lp.grad.view(hp_grad.shape))
        folded(lp, group_idx, param_idx, hp_grad)

    optimizer._update_hp_grad = update_hp_grad

    # On a GPU the whole fold is one kernel launch (grad_fold) instead of an add per parameter.
    deepspeed_update_hp_grads = optimizer.update_hp_grads
    fold = None

    @torch.no_grad()
    def update_hp_grads(clear_lp_grads=False):
        nonlocal fold
        groups = zip(optimizer.bf16_groups, optimizer.fp32_groups_gradients, strict=True)
        params = [(i, j, lp, hp) for i, (lps, hps) in enumerate(groups)
                  for j, (lp, hp) in enumerate(zip(lps, hps, strict=True))]
        if optimizer.immediate_grad_update or optimizer.autoep_folding_tp_group is not None \
                or not params or not grad_fold.available(params[0][3].device):
            return deepspeed_update_hp_grads(clear_lp_grads)  # one update_hp_grad (above) per parameter
        to_fold = [(lp, hp) for _, _, lp, hp in params if not accumulated_by_matmuls(lp)]
        if to_fold:
            targets = [hp for _, hp in to_fold]
            if fold is None or len(targets) != len(fold.accumulators) \
                    or any(a is not b for a, b in zip(targets, fold.accumulators)):
                fold = grad_fold.Fold(targets)  # made once: DeepSpeed keeps the same accumulators all run
            fold([lp.grad for lp, _ in to_fold])
        for i, j, lp, hp_grad in params:
            if lp.grad is not None or accumulated_by_matmuls(lp):
                folded(lp, i, j, hp_grad)

    optimizer.update_hp_grads = update_hp_grads
    return True


def to_device(x, y, device):
    """A micro-batch's inputs and targets on the engine's device. To a GPU both go through one pinned buffer:
    from pinned memory the copy is asynchronous, and the CPU goes on queueing the step's kernels instead of
    waiting for the GPU to drain its queue up to the copy, as a copy from pageable memory does."""
    device = torch.device(device)
    if device.type != "cuda":
        return x.to(device), y.to(device)
    pinned = torch.empty((2, *x.shape), dtype=x.dtype, pin_memory=True)
    pinned[0], pinned[1] = x, y
    both = pinned.to(device, non_blocking=True)
    return both[0], both[1]


def train_step(engine, loader, grad_accum: int, lr: float, guard, hook, poison: bool = False):
    """One optimizer step over grad_accum micro-batches -> (mean loss over all ranks, grad norm before clipping,
    why the update was skipped or None). `hook` is the engine's NormHook under ZeRO, None without ZeRO.
    `poison` makes the step's loss NaN, as a diverged model would (the test hook DS_TRAIN_NAN_AT_STEP)."""
    for group in engine.optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=engine.device)
    for micro_step in range(grad_accum):
        x, y = loader.next_batch()
        loss = engine(*to_device(x, y, engine.device))
        if poison:
            loss = loss * float("nan")
        loss_sum += loss.detach().float()
        engine.backward(loss)  # divides by grad_accum; reduces gradients at the accumulation boundary
        if micro_step < grad_accum - 1:
            engine.step()  # a no-op for the optimizer before the boundary
    mean_loss = distributed.all_reduce_mean(loss_sum / grad_accum)  # on the device until the norm is known
    if hook is None:  # fp32 without ZeRO: DeepSpeed clips but does not report the norm
        mean_loss = mean_loss.item()
        norm = grad_norm(engine.module)
        skip = guard.judge(mean_loss, norm)
        if skip:
            for p in engine.module.parameters():
                p.grad.zero_()  # DeepSpeed still clips them (to nothing) ...
            engine.optimizer.step = lambda *args, **kwargs: None  # ... but the optimizer does not step
            engine.step()
            del engine.optimizer.step  # the class's real step again
        else:
            engine.step()
        return mean_loss, norm, skip
    hook.verdict, hook.loss = guard.judge, mean_loss
    hook.norm = hook.loss_value = hook.reason = None
    skipped_before = engine.skipped_steps
    engine.step()
    if hook.norm is None:  # DeepSpeed found the gradients non-finite before it got to the norm
        hook.norm, hook.loss_value = math.nan, mean_loss.item()
        hook.reason = guard.judge(hook.loss_value, math.nan)
    assert (engine.skipped_steps > skipped_before) == (hook.reason is not None), "the guard and DeepSpeed disagree"
    return hook.loss_value, hook.norm, hook.reason
