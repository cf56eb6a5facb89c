"""Checkpoints: DeepSpeed's own checkpoint of the engine, ds_train's state beside it, llm.c's DONE marker.

In the run's -o directory, step s is `checkpoints/step_%08d/` (what engine.save_checkpoint writes: model
states and, under ZeRO, each rank's optimizer partition) and `DONE_%08d`, an empty file that rank 0 creates
only after every rank has finished writing, as llm.c does. ds_train's own state (step, model shape, data
loader position, run settings) travels in DeepSpeed's client state under the key "ds_train".
"""

import glob
import os
import re

import torch

from ds_train.errors import UserError
from ds_train.model import GPTConfig

CHECKPOINTS = "checkpoints"
DONE = "DONE_%08d"


def tag(step: int) -> str:
    return f"step_{step:08d}"


def save(engine, out_dir: str, step: int, state: dict):
    engine.save_checkpoint(os.path.join(out_dir, CHECKPOINTS), tag=tag(step), client_state={"ds_train": state})
    torch.distributed.barrier()  # every rank's files are on disk before the marker says so
    if torch.distributed.get_rank() == 0:
        open(os.path.join(out_dir, DONE % step), "w").close()


def done_steps(out_dir: str) -> list:
    steps = [int(m.group(1)) for p in glob.glob(os.path.join(out_dir, "DONE_*"))
             if (m := re.fullmatch(r"DONE_(\d{8})", os.path.basename(p)))]
    return sorted(steps)


def locate(path: str):
    """(checkpoints root, tag) for a run directory (its newest complete checkpoint) or a step_* directory."""
    if os.path.isdir(os.path.join(path, CHECKPOINTS)):
        steps = done_steps(path)
        if not steps:
            raise UserError(f"{path}: no complete checkpoint (no DONE_* marker)")
        return os.path.join(path, CHECKPOINTS), tag(steps[-1])
    if re.fullmatch(r"step_\d{8}", os.path.basename(os.path.normpath(path))) and glob.glob(os.path.join(path, "*model_states.pt")):
        return os.path.dirname(os.path.normpath(path)), os.path.basename(os.path.normpath(path))
    raise UserError(f"{path}: not a ds_train checkpoint (expected a run directory with {CHECKPOINTS}/ and DONE_* "
                    "markers, or one of its step_* directories)")


def client_state(root: str, step_tag: str) -> dict:
    files = sorted(glob.glob(os.path.join(root, step_tag, "*model_states.pt")))
    return torch.load(files[0], map_location="cpu", weights_only=False)["ds_train"]


def load_fp32(path: str):
    """(GPTConfig, fp32 state dict) of a checkpoint; ZeRO partitions are consolidated to the fp32 master weights."""
    root, step_tag = locate(path)
    state = client_state(root, step_tag)
    cfg = GPTConfig(**state["model"])
    if state["zero_stage"] == 0:  # the module's own weights (fp32: ds_train refuses bf16 without ZeRO)
        weights = torch.load(os.path.join(root, step_tag, "mp_rank_00_model_states.pt"), map_location="cpu",
                             weights_only=False)["module"]
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        weights = get_fp32_state_dict_from_zero_checkpoint(root, tag=step_tag)
    weights = {name: tensor.float() for name, tensor in weights.items()}
    weights["lm_head.weight"] = weights["transformer.wte.weight"]
    return cfg, weights
