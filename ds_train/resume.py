"""Resume (-y 1): what a checkpoint records about the run, the checks that it can continue this run, and the
loader, weights and optimizer state that continue it, resharded when the ranks or the ZeRO stage changed."""

import os
from dataclasses import asdict

import torch

from ds_train import checkpoint, distributed, reshard
from ds_train.config import RunConfig
from ds_train.data import ReplayLoader, ShardLoader
from ds_train.errors import UserError
from ds_train.outliers import UpdateGuard


def run_state(run: RunConfig, step: int, guard: UpdateGuard) -> dict:
    """What a checkpoint records about the run as a whole (each rank's data position and RNGs go beside it)."""
    return {"step": step, "model": asdict(run.model), "init": run.init, "zero_stage": run.zero_stage,
            "world_size": run.world_size, "B": run.B, "T": run.T, "total_batch_size": run.total_batch_size,
            "update_guard": guard.state_dict(), "run": run.to_dict()}


def evaluation_pending(run: RunConfig, step: int) -> bool:
    """Whether a stop signal cut short the evaluation of checkpoint `step`'s step (its EVAL_PENDING marker), as rank
    0 sees it: every rank evaluates that step again, or none (the evaluations are collective)."""
    pending = [checkpoint.evaluation_pending(run.output_dir, step) if torch.distributed.get_rank() == 0 else None]
    torch.distributed.broadcast_object_list(pending, src=0)
    return pending[0]


def check_settings(saved: dict, run: RunConfig, where: str):
    """Settings that must match the checkpoint for the resumed run to continue the same optimisation."""
    if saved["model"] != asdict(run.model):
        raise UserError(f"-y 1: {where} holds a {saved['init']} model ({saved['model']}), not the -e {run.init} "
                        "model of this run; use another -o or the same -e")
    if saved["T"] != run.T:
        raise UserError(f"-y 1: {where} was trained with -t {saved['T']}, this run asks for -t {run.T}; resume with "
                        f"-t {saved['T']} (or start a new run in another -o)")
    if saved["total_batch_size"] != run.total_batch_size and not run.resume_new_batch:
        raise UserError(f"-y 1: {where} was trained with -d {saved['total_batch_size']}, this run asks for -d "
                        f"{run.total_batch_size}; resume with -d {saved['total_batch_size']}, or add --resume_new_batch 1 "
                        "to go on with the new total batch")


def check_step(run: RunConfig, resume_step, num_steps: int):
    """-y 1 starts from step 0 only where no run has left a DONE marker: over markers whose checkpoints are all
    damaged it would write its own steps into the old run's directory. A checkpoint past -x has nothing to train."""
    marked = checkpoint.done_steps(run.output_dir)
    if resume_step is None and marked:
        steps = f"step {marked[0]}" if len(marked) == 1 else f"steps {marked[0]} to {marked[-1]}"
        raise UserError(f"-y 1: -o {run.output_dir} has DONE markers ({steps}) but no checkpoint there verifies "
                        "(each is missing or damaged: see the warnings above); resume from another -o, "
                        "or remove its DONE_* markers and checkpoints/ to start over")
    if resume_step is not None and resume_step > num_steps:
        steps = f"-x {num_steps}" if run.max_steps > 0 else f"the {num_steps} steps of one epoch (-x -1)"
        raise UserError(f"-y 1: {checkpoint.step_dir(run.output_dir, resume_step)} is at step {resume_step}, past "
                        f"{steps}: there is nothing to train; resume with an -x above {resume_step}")


def check_same_data(run: RunConfig, streams: list, where: str, train_files: list):
    """The saved data position is a place in a permutation of particular shards: it continues only the same
    shuffle of the same files (`train_files`, this run's)."""
    _, _, _, _, saved_shuffle = streams[0]["layout"]  # B, T, rank, world, shuffle (data.ShardLoader.state_dict)
    saved_shuffle, shuffle = bool(saved_shuffle), run.shuffle
    if saved_shuffle != shuffle:
        raise UserError(f"-y 1: {where} was trained with --shuffle {int(saved_shuffle)}, this run asks for --shuffle "
                        f"{int(shuffle)}; resume with --shuffle {int(saved_shuffle)} (or start a new run in another -o)")
    saved_files = streams[0]["files"]
    files = [os.path.basename(path) for path in train_files]
    if saved_files != files:
        raise UserError(f"-y 1: {where} was trained on {shard_names(saved_files)}, this run's {run.train_flag} "
                        f"{run.train_data} gives {shard_names(files)}; resume with the same shards (or start a new run "
                        "in another -o)")


def shard_names(names: list) -> str:
    return ", ".join(names) if len(names) <= 3 else f"{len(names)} shards, {names[0]} ... {names[-1]}"


def continued_loader(run: RunConfig, place, streams: list):
    """The train loader that continues a checkpoint's data stream: llm.c's own loader when this run has the
    stream's layout (ranks x -b), else a replay of the stream (data.ReplayLoader)."""
    stream_B, stream_world = streams[0]["layout"][0], len(streams)
    if (stream_B, stream_world) == (run.B, run.world_size):
        loader = ShardLoader(run.train_data, run.B, run.T, place.rank, place.world_size, run.shuffle,
                             flag=run.train_flag, vocab_size=run.model.vocab_size)
        loader.load_state_dict(streams[place.rank])
        return loader
    if (run.B * run.world_size * run.grad_accum) % (stream_B * stream_world):
        raise UserError(f"-d {run.total_batch_size}: the checkpoint's data stream moves in micro-steps of "
                        f"{stream_world} ranks x {stream_B} rows x {run.T} tokens; resume with a multiple of "
                        f"{stream_world * stream_B * run.T} tokens")
    loader = ReplayLoader(run.train_data, run.B, run.T, place.rank, place.world_size, run.grad_accum, run.shuffle,
                          stream_B, stream_world, flag=run.train_flag, vocab_size=run.model.vocab_size)
    loader.load_state_dict({"loaders": streams})
    return loader


def load_data(run: RunConfig, place, step: int, guard: UpdateGuard, train_files: list):
    """Before the engine is built: check that checkpoint `step` of -o can continue this run, whose train shards
    are `train_files` -> (its run state, the train loader that continues its data stream, this rank's RNG states)."""
    saved = checkpoint.client_state(os.path.join(run.output_dir, checkpoint.CHECKPOINTS), checkpoint.tag(step))
    where = checkpoint.step_dir(run.output_dir, step)
    check_settings(saved, run, where)
    guard.load_state_dict(saved["update_guard"])
    streams, rng = checkpoint.rank_states(run.output_dir, step, saved["world_size"], place.rank)
    check_same_data(run, streams, where, train_files)
    return saved, continued_loader(run, place, streams), rng


def load_engine(engine, run: RunConfig, step: int, saved: dict):
    """Weights and optimizer state of checkpoint `step`, resharded when it was saved on another layout."""
    if (saved["world_size"], saved["zero_stage"]) == (run.world_size, run.zero_stage):
        checkpoint.load_engine(engine, run.output_dir, step)
    else:
        where = checkpoint.step_dir(run.output_dir, step)
        distributed.print0(f"resharding {where} from {saved['world_size']} ranks at ZeRO-{saved['zero_stage']} to "
                           f"{run.world_size} at ZeRO-{run.zero_stage}")
        reshard.load(engine, where, saved["zero_stage"], run.weight_decay, step)
