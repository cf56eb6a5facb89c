"""End to end on CPU: real DeepSpeed, real launches, real shards. Equivalences are checked, not assumed.

All equivalence runs train the same tiny GPT for 8 steps in fp32 on the same tokens (--shuffle 0 reads the
train shard in order, so different micro-batch and world-size splits of one total batch see the same rows).
Stated tolerance: every logged loss agrees within 2e-5 (reduction order differs between layouts).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
import torch

from ds_train.data import read_shard, write_shard
from ds_train.model import GPT, config_from_descriptor
from conftest import (BIN, COMMON, CPU_CONFIG, MAIN, REPO, STEPS, TINY, TRAIN_SHARD, VAL_SHARD, cached_train, child_env,
                      descendants, free_port, kill_tree, one_rank_run, parse, run_process, run_ranks, settings_table,
                      train, with_sigint, zero_run)

TOLERANCE = 2e-5


def reference():
    """2 ranks, ZeRO-1, B=4: the run the others are compared with."""
    return zero_run(1)


def assert_same_training(run, ref=None):
    ref = ref or reference()
    assert len(run.losses) == len(ref.losses) == STEPS
    assert len(run.val_losses) == len(ref.val_losses) == 3  # step 0, step 4, the last step
    assert run.losses == pytest.approx(ref.losses, abs=TOLERANCE)
    assert run.val_losses == pytest.approx(ref.val_losses, abs=TOLERANCE)
    assert run.norms == pytest.approx(ref.norms, abs=1e-3)


def assert_same_val_losses(run, ref):
    """Bitwise, but for step 0's: a process's first forward pass, which on a crowded CPU has come out 16 float32
    ulps off, in forked runs outside the test harness too (docs/testing.md); every later number agreed in each."""
    assert run.val_losses[1:] == ref.val_losses[1:]
    assert run.val_losses[0] == pytest.approx(ref.val_losses[0], rel=1e-5)


def test_training_moves_and_is_deterministic():
    ref = reference()
    again = train([*COMMON, "-b", 4, "-z", 1], ranks=2, launcher="env").check()
    assert again.losses == ref.losses  # bitwise, same layout
    assert_same_val_losses(again, ref)
    assert ref.val_losses[-1] < ref.val_losses[0] - 0.3


@pytest.mark.parametrize("stage", [0, 1, 3])
def test_the_schedule_reaches_the_optimizer(stage):
    """The lr ds_train sets each step is the one the optimizer applies, whatever DeepSpeed wraps it in:
    a longer warmup (smaller first updates) must change the losses, step by step as the rates differ."""
    ref = zero_run(stage)
    slow = train([*COMMON, "-b", 4, "-z", stage, "-u", 6], ranks=2, launcher="env").check()
    assert slow.lrs == pytest.approx([2e-3 * (s + 1) / 6 for s in range(6)] + [2e-3, 2e-3 * (0.1 + 0.9 * 0.5)], rel=1e-2)
    assert slow.losses[0] == ref.losses[0]  # the first loss is before any update
    assert all(a > b for a, b in zip(slow.losses[1:4], ref.losses[1:4]))  # smaller steps, slower descent


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_zero_stages_give_the_same_losses(stage):
    assert_same_training(zero_run(stage))


STATES_LINE = re.compile(r"^model states per rank \(MiB, rank 0 \| 1 \| \.\.\.\): weights ([\d.]+) \| ([\d.]+); "
                         r"fp32 master \+ AdamW ([\d.]+) \| ([\d.]+)$", re.M)


def test_zero_stages_partition_the_model_states_over_two_ranks():
    """What each rank holds after the first step (the runs above, 2 ranks, fp32): ZeRO-1 and 2 split the fp32
    master weights and AdamW's moments in half; ZeRO-3 also the weights, but the tensors under DeepSpeed's
    stage3_param_persistence_threshold (1e5 values) also stay gathered whole beside their shard. Tolerance 1%
    (alignment padding of the partitions)."""
    sizes = {stage: [float(v) for v in STATES_LINE.search(zero_run(stage).stdout).groups()] for stage in range(4)}
    weights, optimizer = sizes[0][0], sizes[0][2]
    assert sizes[0] == [weights, weights, optimizer, optimizer] and optimizer == pytest.approx(3 * weights, rel=1e-3)
    for stage in (1, 2, 3):
        w0, w1, o0, o1 = sizes[stage]
        assert o0 == pytest.approx(optimizer / 2, rel=0.01) and o1 == pytest.approx(optimizer / 2, rel=0.01)
    assert sizes[1][:2] == sizes[2][:2] == [weights, weights]
    with torch.device("meta"):
        params = list(GPT(config_from_descriptor(TINY[1])).parameters())
    persistent = sum(p.numel() for p in params if p.numel() < 1e5) * 4 / 2**20
    expected_zero3 = weights / 2 + persistent
    assert sizes[3][0] == pytest.approx(expected_zero3, rel=0.01) and sizes[3][1] == pytest.approx(expected_zero3, rel=0.01)


OFFLOADED_STATES_LINE = re.compile(r"^model states per rank \(MiB, rank 0 \| 1 \| \.\.\.\): weights ([\d.]+) \| ([\d.]+)( \(offloaded\))?; "
                                   r"fp32 master \+ AdamW ([\d.]+) \| ([\d.]+) \(offloaded\)$", re.M)


@pytest.mark.parametrize("stage, offload", [(2, "optimizer"), (3, "all")])
def test_offload_gives_the_same_losses(stage, offload):
    """The optimizer state (and at ZeRO-3 --offload all the weights) in CPU memory, updated by DeepSpeed's CPU
    AdamW: the same losses as the run that keeps them on the device, the same partition per rank."""
    ref = zero_run(stage)
    run = train([*COMMON, "-b", 4, "-z", stage, "--offload", offload], ranks=2, launcher="env").check()
    assert f"| offload               | {offload} " in run.stdout
    w0, w1, weights_offloaded, o0, o1 = OFFLOADED_STATES_LINE.search(run.stdout).groups()
    assert bool(weights_offloaded) == (offload == "all")
    assert [float(v) for v in (o0, o1)] == [float(v) for v in STATES_LINE.search(ref.stdout).groups()[2:]]
    assert_same_training(run, ref)


def test_gradient_accumulation_matches_a_bigger_micro_batch():
    # -m counts micro-batches (as in llm.c): 4 batches of B=2 cover the val tokens of 2 batches of B=4
    run = cached_train("accum", [*COMMON, "-b", 2, "-z", 1, "-m", 4], ranks=2, launcher="env")
    assert "| grad_accum_steps      | 2 " in run.stdout
    assert_same_training(run)


def test_one_rank_matches_two_ranks_at_the_same_total_batch():
    run = one_rank_run()
    assert "| num_processes         | 1 " in run.stdout and "| grad_accum_steps      | 2 " in run.stdout
    assert_same_training(run)


@pytest.mark.parametrize("stage, level", [(3, 2), (3, 1), (1, 1)])
def test_recompute_levels_give_the_same_losses(stage, level):
    ref = zero_run(stage)
    run = train([*COMMON, "-b", 4, "-z", stage, "-r", level], ranks=2, launcher="env").check()
    assert f"| recompute             | {level} " in run.stdout
    assert_same_training(run, ref)


def test_torch_compile_gives_the_same_losses():
    """--compile 1 (each block and the loss's chunks compiled, as on a GPU, here with ZeRO-3's parameter
    gathering at the block boundary and -r 2's recompute inside the compiled block) trains as eager does."""
    run = train([*COMMON, "-b", 8, "-z", 3, "-r", 2, "--compile", 1]).check()  # 1 rank: one process compiles
    assert "| torch.compile         | 1 " in run.stdout
    assert_same_training(run, zero_run(3))


def test_json_activation_checkpointing_section_is_applied(tmp_path):
    ds = tmp_path / "ds.json"
    # the options that keep the checkpoints elsewhere: partitioned across ranks, in CPU memory
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3},
                              "activation_checkpointing": {"partition_activations": True, "cpu_checkpointing": True}}))
    run = train([*COMMON, "-b", 4, "-o", tmp_path / "out"], ranks=2, launcher="env", ds_config=str(ds)).check()
    saved = json.loads((tmp_path / "out" / "run_config.json").read_text())
    assert saved["recompute"] == 3 and "whole blocks" in run.stdout
    assert "activation_checkpointing" in json.loads((tmp_path / "out" / "ds_config.json").read_text())
    assert_same_training(run, zero_run(3))


def test_bf16_trains_on_cpu_close_to_fp32(tmp_path):
    ds = tmp_path / "bf16.json"
    ds.write_text(json.dumps({"bf16": {"enabled": True}, "zero_optimization": {"stage": 1}}))
    short = ["-e", "gpt2:d2:c64:h2", "-t", 16, "-b", 2, "-x", 3, "-v", 100, "-m", 1, "-s", 0, "-r", 0, "-l", "1e-3", "--shuffle", 0]
    bf16 = train(short, ranks=2, launcher="env", ds_config=str(ds)).check()
    fp32 = train(short, ranks=2, launcher="env").check()
    assert "bf16 (fp32 master weights)" in bf16.stdout
    assert "CPU Virtual Memory" not in bf16.stdout  # BF16_Optimizer's forced memory reports are left out
    assert bf16.losses == pytest.approx(fp32.losses, abs=5e-3)
    assert bf16.losses != fp32.losses  # it really ran in bf16


def test_bf16_one_rank_matches_two_ranks_at_the_same_total_batch(tmp_path):
    """bf16 at ZeRO-1, the GPU's default path (the bf16 gradients folded into fp32 by ds_train, the blocks'
    weight gradients added into the fp32 accumulators by their matmuls, the accumulators all-reduced across
    ranks): 2 ranks of one micro-step agree with 1 rank of two. The first step's norm is of the same fp32 sums
    added in another order; later steps start from bf16 weights that a different rounding of the fp32 master
    weights may have moved by one bf16 step, hence the looser loss tolerance than fp32's."""
    ds = tmp_path / "bf16.json"
    ds.write_text(json.dumps({"bf16": {"enabled": True}, "zero_optimization": {"stage": 1}}))
    two = train([*COMMON, "-b", 4, "-z", 1], ranks=2, launcher="env", ds_config=str(ds)).check()
    one = train([*COMMON, "-b", 4, "-z", 1, "-m", 4], ranks=1, ds_config=str(ds)).check()
    assert "bf16 (fp32 master weights)" in one.stdout and "| grad_accum_steps      | 2 " in one.stdout
    assert len(one.losses) == len(two.losses) == STEPS and one.losses[0] == two.losses[0]
    assert one.norms[0] == pytest.approx(two.norms[0], rel=1e-4)
    assert one.losses == pytest.approx(two.losses, abs=5e-4) and one.val_losses == pytest.approx(two.val_losses, abs=5e-4)


# a real bf16 ZeRO-1 engine of the tiny model on one rank, built as main.py builds it, for the scripts below
ENGINE_SCRIPT = """
import sys, torch
from ds_train import config, distributed
from ds_train.main import build_engine
place = distributed.discover()
run, ds, _ = config.resolve(config.parse_args(sys.argv[1:]), place.world_size, has_gpu=torch.cuda.is_available())
distributed.init_process_group(place)
engine = build_engine(run, ds)
optimizer = engine.optimizer
"""
# after each script, as main.py ends: a rank that exits with the process group alive can abort at interpreter exit
# ("terminate called without an active exception", seen once in a 2-rank ZeRO-2 script after it had printed)
ENGINE_SCRIPT_END = """
distributed.shutdown()
"""


def run_on_bf16_engine(tmp_path, script: str, gpu: bool = False, stage: int = 1, ranks: int = 1,
                       accumulation: int = 1) -> str:
    """ENGINE_SCRIPT then `script`, in fresh processes (`ranks` of them; on the GPU with gpu, else the CPU) with
    a bf16 engine at ZeRO `stage` and `accumulation` micro-steps a step; their stdout."""
    ds = tmp_path / "bf16.json"
    ds.write_text(json.dumps({"bf16": {"enabled": True}, "zero_optimization": {"stage": stage}}))
    path = tmp_path / "script.py"
    path.write_text(ENGINE_SCRIPT + script + ENGINE_SCRIPT_END)
    args = [str(path), "--ds_config", str(ds), *TINY, "-b", "2", "-d", str(64 * ranks * accumulation), "--compile", "0", "-ge", "0", "-fa", "0"]
    env = dict(child_env(threads=2, gpu=gpu),
               PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    result = run_ranks([sys.executable, *args], ranks, env, 300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


FOLD_SCRIPT = """
from ds_train.weight_grad import LINEARS
assert type(optimizer).__name__ == "BF16_Optimizer" and "_update_hp_grad" in vars(optimizer), "no one-kernel fold"
gen = torch.Generator().manual_seed(0)
batches = [torch.randint(0, 50257, (run.B, run.T + 1), generator=gen).to(engine.device) for _ in range(3)]
blocks = engine.module.transformer.h
direct = {id(block.get_submodule(path).weight) for block in blocks for path in LINEARS}
attached = {id(p) for p in engine.module.parameters() if getattr(p, "main_grad", None) is not None}
assert attached == direct and len(direct) == 4 * len(blocks), (len(attached), len(direct))
is_direct = [id(lp) in direct for group in optimizer.bf16_groups for lp in group]

def accumulated():  # three micro-steps' gradients in the fp32 accumulators
    optimizer.clear_hp_grads()
    for batch in batches:
        engine.backward(engine(batch[:, :-1], batch[:, 1:]))
    assert all(all(group) for group in optimizer.fp32_groups_has_gradients), "a gradient not counted"
    return [g.clone() for group in optimizer.fp32_groups_gradients for g in group]

def bf16_gradients_held():
    return sum(p.grad is not None for p in engine.module.parameters())

ours = accumulated()
assert bf16_gradients_held() == 0, "the bf16 gradients outlive the fold"
for p in engine.module.parameters():  # the blocks' weight gradients through autograd in bf16 again
    p.__dict__.pop("main_grad", None)
del optimizer._update_hp_grad  # DeepSpeed's own fold again: a float32 copy of each bf16 gradient, then the add
del optimizer.update_hp_grads  # (on a GPU ds_train folds them all in one launch, ds_train.grad_fold)
theirs = accumulated()
assert bf16_gradients_held() == len(ours), "DeepSpeed's own fold keeps them"
assert len(ours) == len(theirs) == len(is_direct) > 0 and all(g.abs().sum() > 0 for g in ours)
assert all(torch.equal(a, b) for a, b, d in zip(ours, theirs, is_direct) if not d), "the folds differ"
for a, b, d in zip(ours, theirs, is_direct):  # DeepSpeed's way rounds each micro-step's gradient to bf16 (and
    # bf16's matmul its own fp32 sum), each rounding at most 2^-9 of the value: within 3 * 2^-8 of the largest
    # gradient, but not the same
    if d:
        assert not torch.equal(a, b) and (a - b).abs().max() <= 3 * 2**-8 * b.abs().max(), (a - b).abs().max()
print("folds identical over", len(ours) - sum(is_direct), "accumulators;", sum(is_direct), "accumulated directly",
      "on", engine.device.type)
"""


# the fold's one-launch path (update_hp_grads) on CPU: grad_fold's Fold gives each CPU tensor its own add there
ONE_LAUNCH_ON_CPU = """
from ds_train import grad_fold
grad_fold.available = lambda device: True
"""


@pytest.mark.parametrize("device", ["cpu", "cpu, one-launch path", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the one-launch fold runs on a CUDA GPU"))])
def test_bf16_gradient_fold_in_one_kernel_equals_deepspeeds(tmp_path, device):
    """bf16 at ZeRO-1: ds_train folds each bf16 gradient into its fp32 accumulator with one mixed-precision add
    (update.fold_bf16_gradients_in_one_kernel; on a GPU all of them in one launch) where DeepSpeed copies it to
    fp32 first, and then releases it where DeepSpeed keeps it to zero and accumulate into; a real engine's
    accumulators after three micro-steps are bitwise the same either way. The blocks' linear weights have no
    bf16 gradient: their matmuls add into the fp32 accumulators (ds_train.weight_grad), which then differ from
    DeepSpeed's by its bf16 rounding only. On CPU also through the path that a GPU takes, one Fold for all the
    gradients that need one."""
    script = (ONE_LAUNCH_ON_CPU if device == "cpu, one-launch path" else "") + FOLD_SCRIPT
    out = run_on_bf16_engine(tmp_path, script, gpu=device == "cuda")
    assert "folds identical over" in out and f"8 accumulated directly on {device.split(',')[0]}" in out


NORM_SCRIPT = """
from deepspeed.runtime.utils import clip_tensors_by_global_norm, get_global_norm_of_tensors
from ds_train.update import NormHook
deepspeeds = optimizer.get_grads_for_norm  # the class's own, before the hook wraps it
hook = NormHook(engine)
hook.verdict = lambda loss, norm: None  # no veto
batch = torch.randint(0, 50257, (run.B, run.T + 1), generator=torch.Generator().manual_seed(0))
engine.backward(engine(batch[:, :-1], batch[:, 1:]))  # one micro-step a step: the gradients reach fp32 here

# the norm: one value, handed to DeepSpeed as a one-element tensor that DeepSpeed's norm leaves as it is
theirs = float(get_global_norm_of_tensors(deepspeeds()[0]))
handed, _ = optimizer.get_grads_for_norm()
assert len(handed) == 1 and float(handed[0]) == hook.norm
assert float(get_global_norm_of_tensors(handed)) == hook.norm, "DeepSpeed's norm of the handed norm differs"
assert abs(hook.norm - theirs) <= 1e-6 * theirs, (hook.norm, theirs)

# the clip: the flat buffers scaled at once equal each gradient scaled by itself, bit for bit
grads = [g for group in optimizer.fp32_groups_gradients for g in group]
before = [g.clone() for g in grads]
clip_tensors_by_global_norm(deepspeeds(for_clipping=True), max_norm=theirs / 4, global_norm=theirs)
per_parameter = [g.clone() for g in grads]
for g, b in zip(grads, before):
    g.copy_(b)
flat = optimizer.get_grads_for_norm(for_clipping=True)
assert len(flat) == len(optimizer.param_groups) < len(grads)
clip_tensors_by_global_norm(flat, max_norm=theirs / 4, global_norm=theirs)
assert all(not torch.equal(a, b) for a, b in zip(per_parameter, before) if b.abs().sum() > 0), "nothing clipped"
assert all(torch.equal(a, b) for a, b in zip(grads, per_parameter)), "the clips differ"
print("norm", hook.norm, "and clip agree over", len(grads), "gradients")
"""


def test_bf16_norm_and_clip_in_few_kernels_equal_deepspeeds(tmp_path):
    """bf16 at ZeRO-1: ds_train's NormHook takes the grad norm in one multi-tensor kernel and hands it to
    DeepSpeed as a one-element tensor, and clips each group's flat gradient buffer at once, where DeepSpeed
    runs one kernel per parameter for each; on a real engine the norm is DeepSpeed's to 1e-6 and is what
    DeepSpeed then uses, and the clipped gradients are bitwise DeepSpeed's."""
    assert "and clip agree over" in run_on_bf16_engine(tmp_path, NORM_SCRIPT)


ZERO2_NORM_SCRIPT = """
from torch.overrides import TorchFunctionMode
from ds_train.update import NormHook
assert type(optimizer).__name__ == "DeepSpeedZeroOptimizer", type(optimizer).__name__
assert not optimizer.check_grad_overflow, "DeepSpeed's per-parameter overflow scan is on"
hook = NormHook(engine)
hook.verdict = lambda loss, norm: None  # no veto
batch = torch.randint(0, 50257, (run.B, run.T + 1), generator=torch.Generator().manual_seed(0))
engine.backward(engine(batch[:, :-1], batch[:, 1:]))  # one micro-step a step: the partition's gradients are ready

class CountNorms(TorchFunctionMode):
    count = 0
    def __torch_function__(self, func, types, args=(), kwargs=None):
        CountNorms.count += func is torch.linalg.vector_norm
        return func(*args, **(kwargs or {}))

def norm_and_count(scaled_global_norm):
    CountNorms.count = 0
    with CountNorms():
        norm = float(scaled_global_norm())
    return norm, CountNorms.count

ours, ours_norms = norm_and_count(optimizer.scaled_global_norm)  # as engine.step() calls it, through the hook
del optimizer.get_grad_norm_direct  # DeepSpeed's own: one norm per parameter
theirs, their_norms = norm_and_count(lambda: type(optimizer).scaled_global_norm(optimizer))
params = sum(len(group) for group in optimizer.params_in_partition)
assert ours == hook.norm and abs(ours - theirs) <= 1e-6 * theirs, (ours, hook.norm, theirs)
# one norm per group where DeepSpeed takes one per parameter (and both one more, combining the groups')
assert their_norms - ours_norms == params - len(optimizer.bit16_groups) > 0, (ours_norms, their_norms, params)
print("norm", ours, "in", ours_norms, "norms against", their_norms)
"""


def test_bf16_zero2_norm_in_one_kernel_per_group_equals_deepspeeds(tmp_path):
    """bf16 at ZeRO-2 (DeepSpeed's ZeRO-1/2 optimizer): ds_train turns DeepSpeed's per-parameter overflow scan
    off, and its NormHook takes the grad norm of each group's flat fp32 gradient partition as one tensor, where
    DeepSpeed takes one norm per parameter; on a real engine over two ranks, each holding half of each group,
    the norm is DeepSpeed's to 1e-6. (That the guard still skips a step with NaN gradients at ZeRO-2:
    test_faults.)"""
    assert "norms against" in run_on_bf16_engine(tmp_path, ZERO2_NORM_SCRIPT, stage=2, ranks=2)  # rank 0's; rank 1
    # asserts the same in its own process, whose exit status run_on_bf16_engine checks


READS_SCRIPT = """
import math, traceback
from torch.overrides import TorchFunctionMode
from ds_train.outliers import UpdateGuard
from ds_train.update import NormHook, train_step

class Batches:  # train_step's loader: micro-batches of random tokens
    gen = torch.Generator().manual_seed(0)
    def next_batch(self):
        tokens = torch.randint(0, 50257, (run.B, run.T + 1), generator=self.gen)
        return tokens[:, :-1], tokens[:, 1:]

READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__bool__}

class CountReads(TorchFunctionMode):  # values read off the device, by whose code asked: a wait for the GPU each
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in READS:
            caller = next(f.filename for f in reversed(traceback.extract_stack()[:-1]) if "torch/" not in f.filename)
            self.by["ds_train" if "/ds_train/" in caller else "DeepSpeed"] += 1
        return func(*args, **(kwargs or {}))

assert run.grad_accum == 2, run.grad_accum
guard, hook = UpdateGuard(), NormHook(engine)
for step in range(2):
    counter = CountReads()
    counter.by = {"ds_train": 0, "DeepSpeed": 0}
    with counter:
        loss, norm, skipped = train_step(engine, Batches(), run.grad_accum, 1e-3, guard, hook)
    assert skipped is None and math.isfinite(loss) and math.isfinite(norm) and norm > 0, (loss, norm, skipped)
    assert counter.by["ds_train"] == 1, counter.by  # the loss and the norm, in one read
    print("step", step, "loss", loss, "norm", norm, "reads", counter.by)
"""


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_train_step_reads_the_loss_and_the_norm_off_the_device_once(tmp_path, stage):
    """A step's loss stays on the device until DeepSpeed has the grad norm, and the guard reads both in one
    transfer: on a GPU each read waits for the GPU's queue to drain, and ds_train's step makes one, at each
    ZeRO stage's optimizer (two micro-steps a step, bf16, a real engine; DeepSpeed's own reads are not counted)."""
    out = run_on_bf16_engine(tmp_path, READS_SCRIPT, stage=stage, accumulation=2)
    assert out.count("reads") == 2, out


SLOW_LOG_SCRIPT = """
import sys, time
sys.path.insert(0, sys.argv.pop(1))
from ds_train import main, metrics
step_line = metrics.step_line
def slow_step_line(*args, **kwargs):  # a step's logging that takes a second, after the step's own time is taken
    time.sleep(1.0)
    return step_line(*args, **kwargs)
metrics.step_line = slow_step_line
sys.exit(main.main(sys.argv[1:]))
"""


def test_a_step_is_timed_from_the_end_of_the_one_before(tmp_path):
    """Nothing waits for the update at a step's end, so a step is timed from the end of the step before, and what
    the CPU does in between (here a logging call made to take 1 s) counts in the next step's time; after an
    evaluation, which waits for the GPU itself, the next step is timed from its own start, evaluation not counted."""
    script = tmp_path / "slow_log.py"
    script.write_text(SLOW_LOG_SCRIPT)
    args = ["--ds_config", CPU_CONFIG, *TINY, "-b", "2", "-d", "64", "-x", "6", "-v", "3", "-m", "2",
            "-i", TRAIN_SHARD, "-j", VAL_SHARD]
    result = subprocess.run([sys.executable, str(script), REPO, *args], env=child_env(threads=2),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ms = {int(m.group(1)): float(m.group(2))
          for m in re.finditer(r"^step +(\d+)/6 \|.*\| ([\d.]+) ms", result.stdout, re.M)}
    assert sorted(ms) == [1, 2, 3, 4, 5, 6] and "eval at step 3" in result.stdout, result.stdout[-3000:]
    assert all(ms[step] >= 1000 for step in (2, 3, 5, 6)), ms  # each includes the second before it
    assert ms[4] < 1000, ms  # after step 3's evaluation: timed from its own start


def test_loss_falls_on_tinyshakespeare(tmp_path):
    run = train(["-e", "gpt2:d2:c128:h4", "-i", TRAIN_SHARD, "-j", VAL_SHARD, "-t", 64, "-b", 8, "-x", 40,
                 "-l", "3e-3", "-u", 10, "-q", 0.1, "-v", 20, "-m", 4, "-s", 40, "-g", 16, "-r", 0,
                 "-o", tmp_path], launcher="python").check()
    assert run.val_losses[0] > 10.5  # ln(50257) = 10.8 at init
    assert run.val_losses[-1] < 7.0  # the unigram statistics alone get below 7.5
    assert run.val_losses == sorted(run.val_losses, reverse=True)
    assert sum(run.losses[-5:]) / 5 < sum(run.losses[:5]) / 5 - 3.0
    assert "generating:\n---\n" in run.stdout


def test_a_run_forked_from_the_zygote_prints_what_an_execd_run_prints(tmp_path):
    """Most of the suite's runs are forked from tests/zygote.py (conftest.py). The same run forked and exec'd
    prints the same settings, losses, norms and learning rates; a bad flag, the same one-line error and status."""
    cmd = [sys.executable, MAIN, "--ds_config", CPU_CONFIG, *map(str, [*TINY, "-x", 3, "-v", 2, "-m", 1])]
    runs = [run_process([*cmd, "-o", str(tmp_path / str(fork))], env=child_env(threads=2), fork=fork)
            for fork in (True, False)]
    settings = [settings_table(run.stdout) for run in runs]
    assert [table.pop("output log dir") for table in settings] == [str(tmp_path / "True"), str(tmp_path / "False")]
    assert settings[0] == settings[1] and len(settings[0]) > 20
    forked, execd = (parse(run).check() for run in runs)
    assert (forked.losses, forked.norms, forked.lrs) == (execd.losses, execd.norms, execd.lrs)
    assert len(forked.losses) == 3
    assert_same_val_losses(forked, execd)
    bad = [run_process([*cmd, "-sg", "-1"], env=child_env(), fork=fork) for fork in (True, False)]
    assert [(run.returncode, run.stderr) for run in bad] == \
           [(2, "ds_train: error: -sg -1.0: expected 0 (off) or a positive z-score\n")] * 2


def test_overfitting_one_batch_drives_the_loss_down():
    run = train([*TINY, "-b", 4, "-x", 40, "-a", 1, "-l", "3e-3", "-v", 1000, "-m", 1], launcher="python").check()
    assert "| overfit_single_batch  | 1 " in run.stdout and "| shuffle               | 0 " in run.stdout
    assert run.losses[-1] < 2.0 and run.losses[0] > 10.5  # memorised; real training is near 10 after 40 steps


def test_one_epoch_logs_and_saved_config(tmp_path):
    """-x -1 trains one epoch; main.log has llm.c's lines; the effective config lands in -o."""
    shard, out = tmp_path / "small_train.bin", tmp_path / "run"
    write_shard(str(shard), np.asarray(read_shard(TRAIN_SHARD))[:8500])
    run = train(["-e", "gpt2:d2:c64:h2", "-t", 64, "-i", shard, "-b", 16, "-x", -1, "-v", 4, "-m", 2, "-s", 4,
                 "-g", 8, "-o", out], launcher="python").check()
    steps = 8500 // (16 * 64)  # llm.c: train tokens // tokens per step
    assert f"| train_num_batches     | {steps} " in run.stdout and len(run.losses) == steps
    lines = (out / "main.log").read_text().splitlines()
    train_lines = [line for line in lines if " trl:" in line]
    val_lines = [line for line in lines if " tel:" in line]
    assert len(train_lines) == steps and [line.split()[0] for line in val_lines] == ["s:0", "s:4", f"s:{steps}"]
    assert all(re.fullmatch(r"s:\d+ trl:\d+\.\d{4} lr:\d\.\d{6} norm:\d+\.\d{2}", line) for line in train_lines)
    assert train_lines[0].startswith("s:0 trl:") and train_lines[-1].startswith(f"s:{steps - 1} trl:")
    assert float(val_lines[-1].split("tel:")[1]) == pytest.approx(run.val_losses[-1], abs=1e-4)
    ds = json.loads((out / "ds_config.json").read_text())
    assert ds["train_micro_batch_size_per_gpu"] == 16 and ds["optimizer"]["params"]["betas"] == [0.9, 0.95]
    assert json.loads((out / "run_config.json").read_text())["model"]["num_params"] == 3_385_088
    assert run.stdout.count("generating:") == 2  # at step 4 and at the end


def test_rerun_with_y0_truncates_main_log(tmp_path):
    args = [*TINY, "-b", 4, "-x", 3, "-v", 100, "-m", 1, "-o", tmp_path]
    train(args, launcher="python").check()
    train([*args, "-y", 0], launcher="python").check()
    log = (tmp_path / "main.log").read_text().splitlines()
    assert [l.split()[0] for l in log] == ["s:0", "s:0", "s:1", "s:2", "s:3"]


def sample(run) -> str:
    return run.stdout.split("generating:\n---\n")[1].split("\n---")[0]


def test_samples_are_seeded_and_work_when_zero3_shards_the_weights():
    zero3 = zero_run(3)  # all ranks join each forward
    assert len(sample(reference())) > 20 and sample(reference()) == sample(zero3)


def test_two_nodes_from_a_hostfile_agree_with_one_node(tmp_path):
    """Two "nodes" on this machine, each started by hand with the deepspeed launcher (--no_ssh --node_rank)."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    port = free_port()
    launch = lambda node: [os.path.join(BIN, "deepspeed"), "--hostfile", str(hostfile), "--no_ssh", "--node_rank",
                           str(node), "--master_addr", "127.0.0.1", "--master_port", str(port), MAIN,
                           "--ds_config", CPU_CONFIG, *map(str, [*COMMON, "-b", 4, "-z", 1])]
    env = child_env(threads=1)
    nodes = [subprocess.Popen(launch(node), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for node in (0, 1)]
    outputs = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert "nnodes=2, num_local_procs=1, node_rank=1" in outputs[1][1] + outputs[1][0]
    run = parse(subprocess.CompletedProcess([], 0, *outputs[0]))
    assert "| num_processes         | 2 " in run.stdout
    assert_same_training(run)
    assert sample(run) == sample(reference())


def shm_buffers(port: int) -> set:
    """DeepSpeed's CPU backend puts a ~70 MB all-reduce buffer per rank in /dev/shm and never removes it; the
    names carry the master port, so a run elsewhere on this machine (a parallel test) does not count."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm on this machine")
    return {name for name in os.listdir("/dev/shm")
            if name.startswith("deepspeed_allreduce_buffer") and f"_{port}_" in name}


def test_cpu_runs_leave_no_shared_memory_behind():
    port = free_port()
    before = shm_buffers(port)
    train([*TINY, "-b", 4, "-x", 2], ranks=2, launcher="deepspeed", master_port=port).check()
    assert shm_buffers(port) - before == set()  # under mpirun: the next test


@pytest.mark.skipif(not torch.cuda.is_available(), reason="shows something only where torch sees a GPU")
def test_ds_accelerator_cpu_keeps_launched_ranks_on_the_cpu_of_a_gpu_machine():
    """DeepSpeed's launcher hands its ranks CUDA_VISIBLE_DEVICES=0,1 even where DS_ACCELERATOR=cpu chose its CPU
    accelerator; ds_train then hides the GPUs from torch, so both ranks train on the CPU in fp32 (without that,
    they would take the GPU defaults, and on a machine with one GPU rank 1 would ask for a second). The suite's
    launcher runs rely on it on a GPU machine. The launcher as a module, as where deepspeed's scripts are not
    installed."""
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(free_port()),
           MAIN, "--ds_config", CPU_CONFIG, *TINY, "-b", "4", "-x", "2"]
    env = child_env()
    assert env["DS_ACCELERATOR"] == "cpu" and env["CUDA_VISIBLE_DEVICES"] == ""
    run = parse(run_process(cmd, env=env, timeout=600)).check()
    settings = settings_table(run.stdout)
    assert (settings["device"], settings["precision"], settings["num_processes"]) == ("cpu", "fp32", "2")
    assert "Setting CUDA_VISIBLE_DEVICES=0,1" in run.stdout + run.stderr  # what the launcher did, and still does
    assert len(run.losses) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the messages come from DeepSpeed and torch on a GPU")
def test_a_one_gpu_run_keeps_torchs_and_deepspeeds_chatter_out_of_its_log(tmp_path):
    """On one GPU at bf16 ZeRO-1, the GPU's default path: DeepSpeed's BF16_Optimizer forces five memory reports
    out while it is built, and torch warns at the checkpoint's barrier that it uses the current device, since
    DeepSpeed binds a device to the process group only for several ranks. Neither reaches the log."""
    ds = tmp_path / "bf16.json"
    ds.write_text(json.dumps({"bf16": {"enabled": True}, "zero_optimization": {"stage": 1}}))
    env = child_env(gpu=True)
    cmd = [sys.executable, MAIN, "--ds_config", str(ds), *TINY, "-b", "4", "-x", "2", "-n", "1",
           "-o", str(tmp_path / "run"), "--compile", "0", "-ge", "0", "-fa", "0"]
    run = parse(run_process(cmd, env=env, timeout=600, fork=False)).check()
    assert settings_table(run.stdout)["precision"] == "bf16 (fp32 master weights)" and len(run.losses) == 2
    assert os.path.exists(tmp_path / "run" / "DONE_00000002")  # the barriers of two saves ran
    log = run.stdout + run.stderr
    assert "CPU Virtual Memory" not in log and "barrier(): using the device" not in log, log[-3000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="runs a GPU out of its memory")
def test_a_micro_batch_too_big_for_the_gpu_is_one_line_that_says_what_to_change(tmp_path):
    """d24 at B=64 x T=1024 wants about 60 GiB of activations, more than the quarter of the GPU that this run may
    take (torch's per-process cap, set before main.py runs, leaves the rest to the tests beside it): the first
    step's allocation that fails ends the run with one line (exit 2, which stops the scripts' resume loop) naming
    the step, the settings and the levers, at the GPU defaults (compiled blocks, the fused kernels), not torch's
    traceback."""
    ds = tmp_path / "bf16.json"
    ds.write_text(json.dumps({"bf16": {"enabled": True}, "zero_optimization": {"stage": 1}}))
    capped = ("import runpy, sys, torch; torch.cuda.set_per_process_memory_fraction(0.25); sys.argv[0] = sys.argv[1]; "
              "del sys.argv[1]; runpy.run_path(sys.argv[0], run_name='__main__')")
    cmd = [sys.executable, "-c", capped, MAIN, "--ds_config", str(ds), "-e", "d24", "-t", "1024", "-b", "64",
           "-x", "1", "-s", "0", "-h", "0", "-v", "0", "-j", TRAIN_SHARD]  # the val split is under one B=64 batch
    proc = run_process(cmd, env=child_env(gpu=True), timeout=600, fork=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"ds_train: error: out of GPU memory while training step 1: [\d.]+ [KMG]iB more on top of a "
                        r"peak of [\d.]+ GiB allocated, of the [\d.]+ GiB this process may use of a [\d.]+ GiB GPU "
                        r"\(-e d24, 355M parameters, -b 64 -t 1024 -r 0, ZeRO-1 over 1 rank; the --dry_run estimate: "
                        r"[\d.]+ GiB\); try a smaller -b \(gradient accumulation keeps -d\), a higher -r, a higher ZeRO "
                        r"stage or --offload, or --auto_fit 1 to choose \(README: Memory\)", line), line
    assert "Traceback" not in proc.stdout + proc.stderr


def test_master_ports_are_picked_free_and_below_the_ephemeral_range():
    """The kernel hands out ephemeral ports to any process that binds port 0 or connects (mpirun's own listener took
    one that had been picked for a MASTER_PORT): a picked port is outside that range, and free."""
    lowest_ephemeral = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    for _ in range(20):
        port = free_port()
        assert 10000 <= port < lowest_ephemeral
        with socket.socket() as s:
            s.bind(("0.0.0.0", port))


def test_processes_forked_from_one_parent_pick_different_master_ports():
    """Single runs forked from one parent (the tests' zygote) pick their MASTER_PORTs apart, as exec'd ones do: no
    generator state drawn at import is shared, which made each fork pick the same port and concurrent ones clash."""
    picks = []
    for _ in range(4):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            os.write(write_fd, str(free_port()).encode())
            os._exit(0)
        os.close(write_fd)
        with os.fdopen(read_fd) as pipe:
            picks.append(int(pipe.read()))
        os.waitpid(pid, 0)
    assert len(set(picks)) > 1, picks  # each the same before; 4 alike by chance: 1 in 22768**3


@pytest.mark.parametrize("launcher,ranks", [("python", 1), ("deepspeed", 2), ("mpirun", 2)])
def test_a_taken_master_port_is_a_one_line_error_that_ends_the_job(launcher, ranks):
    """Rank 0 cannot listen on a MASTER_PORT that another process holds: it says so in one line and the job ends.
    Under mpirun it used to print torch's traceback and wait in MPI_Finalize for ever on rank 1, which waited, also
    for ever, on the port's holder to answer as rank 0's store (a hang seen when mpirun took the tests' port)."""
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        port = holder.getsockname()[1]
        run = train([*TINY, "-x", 2, "-b", 4, "-d", 128 * ranks], ranks=ranks, launcher=launcher, master_port=port,
                    timeout=120, extra_env={"MASTER_PORT": str(port)} if launcher == "python" else None)
    assert run.returncode != 0, run.stderr[-3000:]
    assert re.search(rf"^ds_train: error: MASTER_PORT {port}: the port is in use on rank 0's machine \(.+\), so the "
                     r"ranks cannot meet there; pick a free one", run.stderr, re.M), run.stderr[-3000:]
    assert "Traceback" not in run.stdout + run.stderr


@pytest.mark.mostly_waits
def test_ranks_that_do_not_all_meet_say_so_in_one_line():
    """Rank 2 (another node's, say) never starts: rank 0's store and rank 1 wait DEEPSPEED_TIMEOUT minutes for it
    (1 here; DeepSpeed reads it on import, so these ranks are exec'd, not forked from the zygote), then each
    says in one line that not all ranks joined, where torch's rendezvous raised a traceback."""
    cmd = [sys.executable, MAIN, "--ds_config", CPU_CONFIG, *TINY, "-x", "2", "-b", "4"]
    done = run_ranks(cmd, 2, dict(child_env(), DEEPSPEED_TIMEOUT="1"), timeout=240, world_size=3, fork=False)
    assert done.returncode != 0
    for prefix in ("", r"\[rank 1\] "):
        assert re.search(rf"^{prefix}ds_train: error: MASTER_ADDR 127.0.0.1, MASTER_PORT \d+: not all 3 ranks joined "
                         r"\(.+\); start every node's ranks, .+ DEEPSPEED_TIMEOUT .+ \(1 min here\)$",
                         done.stderr, re.M), done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr


def test_a_rank_that_cannot_reach_rank_0_says_so_in_one_line():
    """Only rank 1 runs (rank 0's node down, or MASTER_ADDR wrong): it gives up connecting after DEEPSPEED_TIMEOUT
    (0 minutes here, so at once) with one line naming the address, not torch's traceback."""
    cmd = [sys.executable, MAIN, "--ds_config", CPU_CONFIG, *TINY, "-x", "2", "-b", "4"]
    done = run_ranks(cmd, [1], dict(child_env(), DEEPSPEED_TIMEOUT="0"), timeout=120, world_size=2, fork=False)
    assert done.returncode != 0
    assert re.search(r"^\[rank 1\] ds_train: error: MASTER_ADDR 127.0.0.1, MASTER_PORT \d+: rank 1 could not reach "
                     r"rank 0 there \(.+\); is rank 0 running, .+ \(0 min here\)$", done.stderr, re.M), done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_a_rank_waiting_for_the_others_at_once(tmp_path, signum):
    """Rank 0 of 2 alone, its store listening and waiting for rank 1 (DEEPSPEED_TIMEOUT 1 minute): SIGTERM or a
    Ctrl-C ends it at once with one line, where torch, holding the main thread in C++ while it waits, had left
    Python's handler to run only after the whole timeout. Exec'd with SIGINT as a terminal leaves it."""
    port = free_port()
    env = dict(child_env(), DEEPSPEED_TIMEOUT="1", RANK="0", LOCAL_RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port))
    with open(tmp_path / "stderr", "w+") as err:
        proc = subprocess.Popen([sys.executable, MAIN, "--ds_config", CPU_CONFIG, *TINY, "-x", "2", "-b", "4"], cwd=REPO,
                                env=env, stdout=subprocess.DEVNULL, stderr=err, text=True, start_new_session=True,
                                preexec_fn=with_sigint(signal.SIG_DFL))
        try:
            deadline = time.time() + 120
            while not any(c.pid == proc.pid and c.laddr.port == port and c.status == psutil.CONN_LISTEN
                          for c in psutil.net_connections(kind="tcp")):  # rank 0's store: inside the rendezvous
                assert proc.poll() is None and time.time() < deadline, err.read()[-3000:]
                time.sleep(0.1)
            signalled = time.time()
            proc.send_signal(signum)
            status = proc.wait(timeout=120)
            took = time.time() - signalled
        finally:
            if proc.poll() is None:
                kill_tree(proc)
        err.seek(0)
        said = err.read()
    assert status == 128 + signum and took < 10, (status, took, said[-3000:])
    name = signal.Signals(signum).name
    assert re.search(rf"^ds_train: stopped on {name} while waiting for the ranks to meet at MASTER_ADDR 127.0.0.1, "
                     rf"MASTER_PORT {port}: nothing to save$", said, re.M), said[-3000:]
    assert "Traceback" not in said


def test_rank_0_with_another_machines_master_addr_says_so_in_one_line():
    """Rank 0 runs the store and connects to it at MASTER_ADDR like every rank: with an address that is not this
    machine's (192.0.2.1, a documentation address nothing answers on) it cannot, and says that MASTER_ADDR must be
    its own machine's, not that rank 0 could not reach rank 0."""
    cmd = [sys.executable, MAIN, "--ds_config", CPU_CONFIG, *TINY, "-x", "2", "-b", "4"]
    env = dict(child_env(), DEEPSPEED_TIMEOUT="0", MASTER_ADDR="192.0.2.1")
    done = run_ranks(cmd, [0], env, timeout=120, world_size=2, fork=False)
    assert done.returncode != 0
    assert re.search(r"^ds_train: error: MASTER_ADDR 192.0.2.1, MASTER_PORT \d+: rank 0 could not reach its own store "
                     r"there \(.+\); rank 0 listens on this machine, so MASTER_ADDR must be an address of this machine\. "
                     r"DEEPSPEED_TIMEOUT .+ \(0 min here\)$", done.stderr, re.M), done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr


def test_an_uncaught_exception_on_one_mpi_rank_ends_the_job():
    """ds_train/main.py's hook for a bug's exception: the traceback, then MPI_Abort, where MPI_Finalize on the
    failed rank would wait for ever on a rank waiting for it (here at a barrier)."""
    code = ("import sys; from mpi4py import MPI; sys.path.insert(0, '.'); import ds_train.main as m; "
            "sys.excepthook = m._abort_the_job_on_an_uncaught_exception\n"
            "if MPI.COMM_WORLD.rank == 0: raise RuntimeError('a bug')\n"
            "MPI.COMM_WORLD.Barrier()")
    env = dict(child_env(), OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    done = run_process([os.path.join(BIN, "mpirun"), "--oversubscribe", "-np", "2", sys.executable, "-c", code],
                       env=env, timeout=60)
    assert done.returncode == 1 and "RuntimeError: a bug" in done.stderr, done.stderr[-3000:]


def test_a_hung_mpirun_job_is_killed_with_its_ranks():
    """The tests' clean-up after a timeout (conftest.kill_tree): Open MPI puts each rank in a process group of its
    own, so killing mpirun's group alone left the ranks running."""
    env = dict(child_env(), OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    proc = subprocess.Popen([os.path.join(BIN, "mpirun"), "--oversubscribe", "-np", "2", sys.executable, "-c",
                             "import time; print('up', flush=True); time.sleep(300)"],
                            env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    for _ in range(2):
        assert proc.stdout.readline() == "up\n"
    ranks = [p for p in descendants(proc) if p.name().startswith("python")]
    assert len(ranks) == 2 and all(os.getpgid(rank.pid) != proc.pid for rank in ranks)  # why killpg is not enough
    kill_tree(proc)
    assert psutil.wait_procs(ranks, timeout=10)[1] == []  # none left alive


def test_mpirun_discovers_ranks_through_mpi4py():
    port = free_port()
    before = shm_buffers(port)
    run = train([*COMMON, "-b", 4, "-z", 1], ranks=2, launcher="mpirun", master_port=port).check()
    assert "| num_processes         | 2 " in run.stdout
    assert_same_training(run)
    assert shm_buffers(port) - before == set()
