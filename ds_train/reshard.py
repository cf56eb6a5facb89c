"""Resuming on another layout: a checkpoint's weights and AdamW state moved onto another number of ranks or
another ZeRO stage.

DeepSpeed's checkpoints load only into the layout that saved them. For another one, rank 0 first converts the
checkpoint with DeepSpeed's universal-checkpoint converter (`ds_to_universal`: one folder per parameter
with its whole fp32 master weight, exp_avg and exp_avg_sq) into `universal/` inside the step folder. Every
rank then hands each parameter's whole values to DeepSpeed's safe_set_full_* functions, which keep the part
that this rank owns under ZeRO 1-3. A ZeRO-0 checkpoint holds whole values already and is read directly.
(DeepSpeed's own `load_universal` does the second half too, but in 0.19 it fails for ZeRO-3 targets and
has no ZeRO-0 path at either end.)
"""

import glob
import os
import shutil
import subprocess
import sys

import torch

from ds_train.errors import UserError

UNIVERSAL = "universal"
ADAM_KEYS = ("exp_avg", "exp_avg_sq")


def convert(step_dir: str, target: str = None):
    """Rank 0: write `step_dir/universal/` (or `target`) once, through a temporary folder, so that a killed
    conversion is redone."""
    target = target or os.path.join(step_dir, UNIVERSAL)
    if os.path.isdir(target):
        return
    partial = target + ".tmp"
    shutil.rmtree(partial, ignore_errors=True)
    workers = str(min(4, os.cpu_count() or 1))
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", step_dir,
           "--output_folder", partial, "--inject_missing_state", "--num_extract_workers", workers,
           "--num_merge_workers", workers]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else f"exit status {done.returncode}"
        raise UserError(f"{step_dir}: DeepSpeed's ds_to_universal could not convert this checkpoint for another "
                        f"layout: {last}")
    os.replace(partial, target)


def read_universal(folder: str, name: str, key: str = "fp32") -> torch.Tensor:
    """One parameter's value from a universal checkpoint folder (whole, possibly flattened)."""
    value = torch.load(os.path.join(folder, "zero", name, f"{key}.pt"), map_location="cpu", weights_only=False)
    return value["param"] if isinstance(value, dict) else value


def _adam_step(state: dict) -> int:
    """How many updates AdamW has made (its bias correction depends on it; skipped steps do not count), from a
    saved optimizer's per-tensor state. DeepSpeed's FusedAdam counts a group's steps in the state of its last
    parameter only: take the largest."""
    return max(int(s["step"]) for s in state.values())


class _Source:
    """The checkpoint's whole per-parameter values (fp32 weight, exp_avg and exp_avg_sq, by parameter name) and
    AdamW's step count."""

    def __init__(self, step_dir: str, zero_stage: int, module, weight_decay: float):
        self.step_dir, self.zero_stage = step_dir, zero_stage
        if zero_stage == 0:
            saved = torch.load(os.path.join(step_dir, "mp_rank_00_model_states.pt"), map_location="cpu", weights_only=False)
            self.weights = saved["module"]
            # torch numbers the optimizer's parameters in group order; the groups are built the same way here
            names = {id(p): name for name, p in module.named_parameters()}
            order = [names[id(p)] for group in module.param_groups(weight_decay) for p in group["params"]]
            self.adam = {order[i]: state for i, state in saved["optimizer"]["state"].items()}
            self.adam_step = _adam_step(saved["optimizer"]["state"])
        else:
            first = sorted(glob.glob(os.path.join(step_dir, "*zero_pp_rank_0_mp_rank_00_optim_states.pt")))[0]  # bf16_ too
            saved = torch.load(first, map_location="cpu", weights_only=False)["optimizer_state_dict"]
            self.adam_step = _adam_step((saved.get("base_optimizer_state") or saved["optimizer_state_dict"])["state"])

    def get(self, name: str) -> dict:
        if self.zero_stage == 0:
            return {"fp32": self.weights[name].float(), **{k: self.adam[name][k] for k in ADAM_KEYS}}
        return {key: read_universal(os.path.join(self.step_dir, UNIVERSAL), name, key) for key in ("fp32", *ADAM_KEYS)}


def load(engine, step_dir: str, saved_zero_stage: int, weight_decay: float, step: int):
    """Set the engine's weights and AdamW state (for this rank's partition) from a checkpoint of another layout."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state
    from deepspeed.runtime.zero import GatheredParameters

    rank = torch.distributed.get_rank()
    if saved_zero_stage > 0 and rank == 0:
        convert(step_dir)
    torch.distributed.barrier()
    source = _Source(step_dir, saved_zero_stage, engine.module, weight_decay)
    stage = engine.zero_optimization_stage()
    adam_step = source.adam_step
    base = engine.optimizer if stage == 0 else engine.optimizer.optimizer
    # AdamW creates its moments at its first step, and they are needed now. AdamW's tensors are the module's
    # parameters without ZeRO, else this rank's flat fp32 partition of each group; each of DeepSpeed 0.19's
    # ZeRO optimizers names those (and, for ZeRO-1/2, the module's parameters of each group) in its own way.
    kind = type(engine.optimizer).__name__
    if stage == 0:
        tensors, lp_groups = [p for group in base.param_groups for p in group["params"]], None
    elif kind == "DeepSpeedZeroOptimizer_Stage3":
        tensors, lp_groups = engine.optimizer.fp32_partitioned_groups_flat, None
    elif kind == "BF16_Optimizer":
        tensors, lp_groups = engine.optimizer.fp32_groups_flat_partition, engine.optimizer.bf16_groups
    else:
        tensors, lp_groups = engine.optimizer.single_partition_of_fp32_groups, engine.optimizer.bit16_groups
    for tensor in tensors:
        if not base.state[tensor]:
            base.state[tensor] = {"step": 0, **{key: torch.zeros_like(tensor) for key in ADAM_KEYS}}
    for flat, group in zip(tensors, lp_groups or []):  # each parameter's view of its partition of the moments
        for param in group:
            if param._hp_mapping is not None:
                param._hp_mapping.set_optim_state_fragment(flat, base.state[flat])
    for name, param in engine.module.named_parameters():
        values = source.get(name)
        shape = param.ds_shape if stage == 3 else param.shape
        values = {key: value.reshape(shape).to(torch.float32) for key, value in values.items()}
        if stage == 3:  # the module's (bf16 or fp32) copy: gathered, set on rank 0, partitioned again on exit
            with GatheredParameters([param], modifier_rank=0):
                if rank == 0:
                    param.data.copy_(values["fp32"])
        else:
            param.data.copy_(values["fp32"])
        if stage == 0:
            for key in ADAM_KEYS:
                base.state[param][key].copy_(values[key])
        else:  # the fp32 master weight and the moments: each rank keeps its own part
            safe_set_full_fp32_param(param, values["fp32"].to(engine.device))
            for key in ADAM_KEYS:
                safe_set_full_optimizer_state(param, values[key].to(engine.device), key)
    torch_adamw = type(base).__module__.startswith("torch.optim")  # counts its step in a tensor, FusedAdam in an int
    for state in base.state.values():
        state["step"] = torch.tensor(float(adam_step)) if torch_adamw else adam_step
    for group in base.param_groups:
        if "step" in group:
            group["step"] = adam_step
    engine.global_steps = step
    engine.global_samples = step * engine.train_batch_size()
