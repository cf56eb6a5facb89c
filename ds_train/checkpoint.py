"""Checkpoints: DeepSpeed's own checkpoint of the engine, ds_train's state beside it, llm.c's DONE marker.

In the run's -o directory, step s is `checkpoints/step_%08d/` (what engine.save_checkpoint writes: model
states and, under ZeRO, each rank's optimizer partition, plus one `ds_train_rank_%05d.pt` per rank with that
rank's data-loader position and RNG states) and `DONE_%08d`, which rank 0 writes only after every rank has
finished writing, as llm.c does. The run-wide state (step, model shape, settings) travels in DeepSpeed's
client state under the key "ds_train".

A checkpoint counts only with its DONE marker, so a save killed at any moment leaves the previous one in
charge. The marker also lists every file of the checkpoint with its size and sha256 (llm.c's markers are
empty; an empty marker is accepted, and then each of the step's torch files must at least open as the zip
archive torch.save writes), so a checkpoint truncated or corrupted after the fact is noticed and passed over.
The ranks share the hashing out, at save and at resume.

`EVAL_PENDING_%08d` beside a DONE marker says that a stop signal cut that step's evaluation short: the checkpoint is
whole, and a run resumed from it evaluates the step again, then removes the marker (so scripts/' resume loop counts a
run done only at the last step's DONE marker without one).
"""

import contextlib
import glob
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import zipfile

import numpy as np
import torch

from ds_train.errors import UserError
from ds_train.model import GPTConfig

CHECKPOINTS = "checkpoints"
DONE = "DONE_%08d"
EVAL_PENDING = "EVAL_PENDING_%08d"


def tag(step: int) -> str:
    return f"step_{step:08d}"


RANK_STATE = "ds_train_rank_%05d.pt"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


def _fsync_tree(path: str):
    for folder, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())


def _write_atomically(path: str, text: str):
    with open(path + ".tmp", "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def save(engine, out_dir: str, step: int, state: dict, rank_state: dict, keep_last: int = 0, keep_every: int = 0,
         evaluation_pending: bool = False):
    """Save step `step` on every rank; rank 0 marks it DONE once all have written, then applies retention.
    `evaluation_pending`: a stop cut the step's evaluation short (the EVAL_PENDING marker)."""
    root = os.path.join(out_dir, CHECKPOINTS)
    where = step_dir(out_dir, step)
    rank = torch.distributed.get_rank()
    if rank == 0:  # leftovers of a save of this step that was killed: start from an empty folder
        shutil.rmtree(where, ignore_errors=True)
    torch.distributed.barrier()
    try:
        engine.save_checkpoint(root, tag=tag(step), client_state={"ds_train": state}, save_latest=False)
        torch.save(rank_state, os.path.join(where, RANK_STATE % rank))
        _fsync_tree(where)
    except (OSError, RuntimeError) as e:
        raise _save_error(e, out_dir, step) from None
    torch.distributed.barrier()  # every rank's files are on disk before they are listed and the marker says so
    names = [sorted(os.path.relpath(os.path.join(folder, name), where)
                    for folder, _, files in os.walk(where) for name in files) if rank == 0 else None]
    torch.distributed.broadcast_object_list(names, src=0)  # one listing, whatever each node's filesystem cache says
    world = torch.distributed.get_world_size()
    mine = {name: _fingerprint(os.path.join(where, name)) for name in names[0][rank::world]}  # hashing shared out
    everyone = [None] * world
    torch.distributed.all_gather_object(everyone, mine)
    if rank == 0:
        files = {name: part[name] for part in everyone for name in part}
        set_evaluation_pending(out_dir, step, evaluation_pending)  # before DONE: a whole checkpoint never lacks it
        _write_atomically(os.path.join(out_dir, DONE % step), json.dumps({"step": step, "files": files}, indent=1))
        prune(out_dir, keep_last, keep_every)


def evaluation_pending(out_dir: str, step: int) -> bool:
    return os.path.exists(os.path.join(out_dir, EVAL_PENDING % step))


def set_evaluation_pending(out_dir: str, step: int, pending: bool):
    path = os.path.join(out_dir, EVAL_PENDING % step)
    if pending:
        _write_atomically(path, f"a stop signal cut step {step}'s evaluation short; a run resumed from its checkpoint "
                                "(-y 1) evaluates that step again and removes this file\n")
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _save_error(error: Exception, out_dir: str, step: int) -> Exception:
    """A save that could not write (a full disk, a quota, a lost mount) as a UserError that says so and where the
    run can resume from; any other error as it is."""
    if isinstance(error, OSError):
        why = error.strerror or str(error)
    elif "unexpected pos" in str(error):  # torch's zip writer: fewer bytes reached the file than it wrote
        why = "a write came up short (is the disk full, or a quota reached?)"
    else:
        return error
    try:
        why += f"; {shutil.disk_usage(out_dir).free / 2**20:.0f} MiB free there"
    except OSError:
        pass
    done = done_steps(out_dir)
    resume = f"-y 1 resumes from step {done[-1]}" if done else "no checkpoint of this run is complete yet"
    return UserError(f"-o {out_dir}: cannot save the checkpoint of step {step}: {why}. Its folder "
                     f"{step_dir(out_dir, step)} is incomplete (no DONE marker) and can be deleted; {resume}")


def _fingerprint(path: str) -> dict:
    with open(path, "rb") as f:
        return {"bytes": os.fstat(f.fileno()).st_size, "sha256": hashlib.file_digest(f, "sha256").hexdigest()}


def prune(out_dir: str, keep_last: int, keep_every: int, say=print):
    """-nk / -nm: keep every checkpoint from the `keep_last`-th newest whole one on (0 = all) and every multiple of
    `keep_every`; also clear the folders of saves that never completed, older than the newest complete one.
    Whole is what verify() checks short of the checksums, which would cost a read of every kept checkpoint at every
    save: so a checkpoint truncated since its save neither counts among the `keep_last` nor lets an older whole one
    be deleted."""
    steps = done_steps(out_dir)
    doomed = []
    if keep_last:
        whole = 0
        for s in reversed(steps):
            problem = verify(out_dir, s, checksums=False)
            if problem:
                say(f"warning: checkpoint step {s} is damaged ({problem}); kept, but not counted among "
                    f"the {keep_last} whole ones that -nk keeps")
            else:
                whole += 1
            if whole == keep_last:
                doomed = [d for d in steps if d < s and not (keep_every and d % keep_every == 0)]
                break
    for s in doomed:
        os.remove(os.path.join(out_dir, DONE % s))  # the marker first: a half-deleted checkpoint never looks complete
        set_evaluation_pending(out_dir, s, False)
        shutil.rmtree(os.path.join(out_dir, CHECKPOINTS, tag(s)), ignore_errors=True)
    for path in glob.glob(os.path.join(out_dir, CHECKPOINTS, "step_*")):
        m = re.fullmatch(r"step_(\d{8})", os.path.basename(path))
        if m and steps and int(m.group(1)) < steps[-1] and int(m.group(1)) not in steps:
            shutil.rmtree(path, ignore_errors=True)


def verify(out_dir: str, step: int, share=(0, 1), checksums: bool = True):
    """None when checkpoint `step` is whole, else what is wrong with it. Sizes are checked for every file,
    checksums (unless `checksums` is False) for this rank's share (rank, world) of them."""
    where = step_dir(out_dir, step)
    if not os.path.isdir(where):
        return f"{where} is missing"
    marker = os.path.join(out_dir, DONE % step)
    try:
        with open(marker) as f:
            text = f.read()
        manifest = json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return f"{marker} is unreadable"
    if manifest is None:  # an llm.c-style empty marker: no sizes or checksums to check against
        return unreadable_files(where)
    files = _manifest_files(manifest, step)
    if files is None:
        return (f"{marker} is unreadable: not the JSON that ds_train writes there "
                f'({{"step": {step}, "files": {{name: {{"bytes": ..., "sha256": ...}}}}}})')
    for name, saved in files.items():
        path = os.path.join(where, name)
        if not os.path.isfile(path):
            return f"{path} is missing"
        if os.path.getsize(path) != saved["bytes"]:
            return f"{path} has {os.path.getsize(path)} bytes, {saved['bytes']} when saved"
    if not checksums:
        return None
    rank, world = share
    for name in sorted(files)[rank::world]:
        if "sha256" in files[name] and _fingerprint(os.path.join(where, name))["sha256"] != files[name]["sha256"]:
            return f"{os.path.join(where, name)} does not match its sha256 from the save (corrupted)"
    return None


def _manifest_files(manifest, step: int):
    """A DONE marker's {file name: {"bytes": size, "sha256": digest}}, or None when it is not what save()
    writes for `step` (a marker written by hand, or by another program)."""
    if not (isinstance(manifest, dict) and manifest.get("step") == step and isinstance(manifest.get("files"), dict)
            and manifest["files"]):
        return None
    files = {}
    for name, saved in manifest["files"].items():
        if type(saved) is int:  # markers of ds_train before checksums
            saved = {"bytes": saved}
        if not (isinstance(saved, dict) and type(saved.get("bytes")) is int and isinstance(saved.get("sha256", ""), str)):
            return None
        files[name] = saved
    return files


def unreadable_files(where: str):
    """None when step folder `where` has the files a resume or an export reads first and every torch file in
    it opens as the zip archive torch.save writes, else what is wrong. What a checkpoint with no manifest (an
    llm.c-style empty marker, or none) can be checked against: a truncated file has lost its zip directory."""
    if not glob.glob(os.path.join(where, "*model_states.pt")):
        return f"{where} has no *model_states.pt file"
    if not os.path.isfile(os.path.join(where, RANK_STATE % 0)):
        return f"{os.path.join(where, RANK_STATE % 0)} is missing"
    for path in sorted(glob.glob(os.path.join(where, "*.pt"))):
        try:
            with zipfile.ZipFile(path):
                pass
        except (OSError, zipfile.BadZipFile):
            return f"{path} is not a whole torch file (truncated or corrupted)"
    return None


def newest_whole(out_dir: str, say=print, distributed: bool = False):
    """The newest checkpoint step in `out_dir` that verifies (None if there is none); says what it passes over.
    `distributed`: every rank checks a share of the checksums, and all agree on the answer."""
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
    steps = done_steps(out_dir)
    for step in reversed(steps):
        problem = verify(out_dir, step, (rank, world))
        if distributed:
            problems = [None] * world
            torch.distributed.all_gather_object(problems, problem)
            problem = next((p for p in problems if p), None)
        if problem is None:
            return step
        fallback = "falling back to the one before it" if step != steps[0] else "no checkpoint before it"
        say(f"warning: checkpoint step {step} is damaged ({problem}); {fallback}")
    return None


def step_dir(out_dir: str, step: int) -> str:
    return os.path.join(out_dir, CHECKPOINTS, tag(step))


def load_engine(engine, out_dir: str, step: int):
    """Load step `step` into an engine of the layout that saved it (weights, optimizer)."""
    engine.load_checkpoint(os.path.join(out_dir, CHECKPOINTS), tag=tag(step))


def rank_states(out_dir: str, step: int, saved_world: int, rank: int):
    """-> (the data stream's loader states, one per rank of the stream's layout; this rank's RNG states).

    A run on its stream's own layout saves one loader state per rank; a run replaying another layout's
    stream (data.ReplayLoader) saves the whole stream on every rank. A rank that the saved run did not have
    takes the RNG states of rank (rank mod saved world).
    """
    paths = [os.path.join(step_dir(out_dir, step), RANK_STATE % r) for r in range(saved_world)]
    for path in paths:  # a checkpoint under an llm.c-style empty marker lists no files to verify
        if not os.path.isfile(path):
            raise UserError(f"-y 1: {path} is missing: the checkpoint of step {step} in -o {out_dir} is incomplete "
                            "(its run had one such file per rank); remove its DONE marker to resume from the one before it")
    files = [torch.load(path, map_location="cpu", weights_only=False) for path in paths]
    first = files[0]["train_loader"]
    streams = first["loaders"] if "loaders" in first else [f["train_loader"] for f in files]
    return streams, files[rank % saved_world]["rng"]


def done_steps(out_dir: str) -> list:
    steps = [int(m.group(1)) for p in glob.glob(os.path.join(out_dir, "DONE_*"))
             if (m := re.fullmatch(r"DONE_(\d{8})", os.path.basename(p)))]
    return sorted(steps)


def locate(path: str):
    """(checkpoints root, tag) for a run directory (its newest complete checkpoint) or a step_* directory."""
    if os.path.isdir(os.path.join(path, CHECKPOINTS)):
        step = newest_whole(path)
        if step is None:
            raise UserError(f"{path}: no complete checkpoint (no DONE_* marker, or its checkpoint is damaged)")
        return os.path.join(path, CHECKPOINTS), tag(step)
    root, name = os.path.split(os.path.normpath(path))
    if re.fullmatch(r"step_\d{8}", name) and glob.glob(os.path.join(path, "*model_states.pt")):
        # given directly, a step folder is checked all the same: against its run directory's DONE marker when
        # there is one, else as far as its files themselves tell
        run_dir, step = os.path.dirname(root), int(name[5:])
        has_marker = os.path.basename(root) == CHECKPOINTS and os.path.exists(os.path.join(run_dir, DONE % step))
        problem = verify(run_dir, step) if has_marker else unreadable_files(path)
        if problem:
            raise UserError(f"{path}: this checkpoint is damaged or incomplete ({problem}); use another step_* "
                            "directory, or the run directory for its newest intact checkpoint")
        return root, name
    raise UserError(f"{path}: not a ds_train checkpoint (expected a run directory with {CHECKPOINTS}/ and DONE_* "
                    "markers, or one of its step_* directories)")


def client_state(root: str, step_tag: str) -> dict:
    files = sorted(glob.glob(os.path.join(root, step_tag, "*model_states.pt")))
    # mmap: only the small client state is read, not the weights stored beside it
    return torch.load(files[0], map_location="cpu", weights_only=False, mmap=True)["ds_train"]


def _fp32_from_universal(checkpoint_dir: str, cfg: GPTConfig) -> dict:
    from ds_train import reshard
    from ds_train.model import GPT

    with torch.device("meta"):  # names and shapes only: no memory, no init
        shapes = {name: param.shape for name, param in GPT(cfg).named_parameters()}  # the tied head is transformer.wte.weight

    def read(folder):  # ZeRO-3's universal tensors are flat: each takes its parameter's shape
        return {name: reshard.read_universal(folder, name).reshape(shape) for name, shape in shapes.items()}
    folder = os.path.join(checkpoint_dir, reshard.UNIVERSAL)
    if os.path.isdir(folder):  # converted already by a resume on another layout
        return read(folder)
    with tempfile.TemporaryDirectory() as tmp:  # the checkpoint itself may be read-only
        reshard.convert(checkpoint_dir, os.path.join(tmp, reshard.UNIVERSAL))
        return read(os.path.join(tmp, reshard.UNIVERSAL))


def load_fp32(path: str):
    """(GPTConfig, fp32 state dict) of a checkpoint; ZeRO partitions are consolidated to the fp32 master weights."""
    root, step_tag = locate(path)
    state = client_state(root, step_tag)
    cfg = GPTConfig(**state["model"])
    checkpoint_dir = os.path.join(root, step_tag)
    if state["zero_stage"] == 0:  # the module's own weights (fp32: ds_train refuses bf16 without ZeRO)
        weights = torch.load(os.path.join(checkpoint_dir, "mp_rank_00_model_states.pt"), map_location="cpu",
                             weights_only=False)["module"]
    elif glob.glob(os.path.join(checkpoint_dir, "bf16_zero_pp_rank_*")):
        # bf16 at any ZeRO stage (DeepSpeed names its files so): zero_to_fp32 does not read BF16_Optimizer's
        # (ZeRO-1), the universal form reads them all
        weights = _fp32_from_universal(checkpoint_dir, cfg)
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        weights = get_fp32_state_dict_from_zero_checkpoint(root, tag=step_tag)
    weights = {name: tensor.float() for name, tensor in weights.items()}
    weights["lm_head.weight"] = weights["transformer.wte.weight"]
    return cfg, weights
