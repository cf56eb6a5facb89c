"""Bad steps never reach the weights: a NaN loss (the NaN guard, 2 ranks) and a planted outlier batch (-sl, -sg).

"Skipped" is checked where it matters: the checkpoint after the skipped step holds exactly the weights of the
checkpoint before it.
"""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from conftest import RUNS_DIR_VAR, TINY, TRAIN_SHARD, cached_train, train
from ds_train import checkpoint
from ds_train.data import read_shard, write_shard
from ds_train.outliers import UpdateGuard


def fp32_weights(run_dir, step) -> dict:
    """A checkpoint's fp32 master weights (a bf16 one's through DeepSpeed's universal form, seconds each)."""
    return checkpoint.load_fp32(os.path.join(run_dir, "checkpoints", checkpoint.tag(step)))[1]


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[name], b[name]) for name in a)


# ZeRO-0 (ds_train's own skip), ZeRO-3, bf16 at ZeRO-1 (DeepSpeed's BF16_Optimizer, the GPU default) and bf16
# at ZeRO-2 (DeepSpeed's ZeRO-1/2 optimizer with its own overflow scan off, config.py), there also with the
# optimizer offloaded (whose skip kept the NaN gradients for the next step), with the scan off (the guard's
# veto skips) and on (the scan skips); fp32 ZeRO-1/2 skip by the same path as in the -sl test below
@pytest.mark.parametrize("stage,bf16,offload,scan", [(0, False, "none", False), (3, False, "none", False),
                                                     (1, True, "none", False), (2, True, "none", False),
                                                     (2, True, "optimizer", False), (2, True, "optimizer", True)])
def test_a_nan_loss_is_skipped_and_training_goes_on(stage, bf16, offload, scan, tmp_path):
    out = str(tmp_path / "run")
    ds_config = tmp_path / "ds.json"
    ds_config.write_text(json.dumps({"bf16": {"enabled": bf16, **({"check_grad_overflow": True} if scan else {})}}))
    run = train([*TINY, "-b", 4, "-z", stage, "-x", 3, "-n", 1, "-k", "constant", "-u", 0, "-v", 100, "-m", 1,
                 "--offload", offload, "-o", out], ranks=2, launcher="env", ds_config=str(ds_config),
                extra_env={"DS_TRAIN_NAN_AT_STEP": "1"}).check()
    assert run.stdout.count("skipped the update") == 1
    assert "skipped the update of step 2: non-finite loss" in run.stdout
    first, skipped, next_one = (fp32_weights(out, step) for step in (1, 2, 3))
    assert same(first, skipped)
    assert not same(skipped, next_one)  # the next step trains as usual
    assert np.isfinite(run.losses[-1])


# step 141 (0-based 140) of 1 rank, B=8 x T=32, -d 256, --shuffle 0, as a batch of random tokens; a constant lr
PLANTED = [*TINY, "-b", 8, "-d", 256, "-k", "constant", "-u", 0, "-l", "1e-3", "-v", 1000, "-m", 1, "--shuffle", 0]


def the_140_steps_before_the_planted_batch() -> tuple:
    """140 steps at ZeRO-1 on tinyshakespeare whose rows of step 141 are random tokens, checkpointed at 140 with the
    detectors' 128-value windows full; made once per session for both tests below. -> (the run, its train shard)"""
    shard = os.path.join(os.environ[RUNS_DIR_VAR], "planted.bin")
    if not os.path.exists(shard):  # the same bytes whichever worker writes them
        tokens = np.array(read_shard(TRAIN_SHARD))
        rows = slice(140 * 256, 141 * 256 + 1)
        tokens[rows] = np.random.default_rng(0).integers(0, 50257, rows.stop - rows.start)
        write_shard(f"{shard}.{os.getpid()}", tokens)
        os.replace(f"{shard}.{os.getpid()}", shard)
    return cached_train("planted_140", [*PLANTED, "-i", shard, "-z", 1, "-x", 140, "-n", 140]), shard


# the grad norm drifts early in training (z up to ~3.7 on ordinary steps here), so -sg gets a higher bar
@pytest.mark.parametrize("flag,z,stage", [("-sl", 3, 1), ("-sg", 6, 3)])
def test_a_planted_outlier_batch_is_skipped(tmp_path, flag, z, stage):
    """llm.c's detectors need 128 steps of history; step 141 reads a batch of random tokens, whose loss and grad
    norm both stand out. -sl judges the loss, -sg the grad norm (under ZeRO, inside DeepSpeed's step). Step 141
    resumes the shared 140 steps, at ZeRO-3 for -sg: the windows come back from the checkpoint, across stages."""
    before, shard = the_140_steps_before_the_planted_batch()
    out = str(tmp_path / "run")
    shutil.copytree(before.output_dir, out)
    run = train([*PLANTED, "-i", shard, "-z", stage, "-x", 141, "-n", 140, flag, z, "-y", 1, "-o", out]).check()
    assert f"resumed from {out}/checkpoints/step_00000140 at step 140" in run.stdout
    skips = [line for line in run.stdout.splitlines() if line.startswith("skipped the update")]
    judged = {"-sl": "loss z-score", "-sg": "grad norm z-score"}[flag]
    assert len(skips) == 1 and skips[0].startswith(f"skipped the update of step 141: {judged} "), skips
    assert skips[0].endswith(f"> {flag} {z}")
    planted = {"-sl": before.losses + run.losses, "-sg": before.norms + run.norms}[flag]
    assert len(planted) == 141
    assert planted[-1] > 1.5 * max(planted[-20:-1])  # the planted batch is what it was judged on, shown as it was
    assert same(fp32_weights(out, 140), fp32_weights(out, 141))


def test_the_guard_judges_each_value_once_and_never_learns_from_nan():
    guard = UpdateGuard(skip_loss_z=3, skip_grad_z=3)
    rng = np.random.default_rng(0)
    for _ in range(130):
        assert guard.judge(3.0 + 0.01 * rng.standard_normal(), 1.0 + 0.01 * rng.standard_normal()) is None
    window = guard.state_dict()
    assert guard.judge(float("nan"), 1.0) == "non-finite loss"
    assert guard.judge(3.0, float("inf")) == "non-finite grad norm"
    assert guard.state_dict()["loss"]["window"] != window["loss"]["window"]  # the finite loss was seen
    assert guard.judge(3.0, 5.0).startswith("grad norm z-score ")
    assert guard.judge(9.0, 1.0).startswith("loss z-score ")
    quiet = UpdateGuard()  # -sl 0 -sg 0: only non-finite values are skipped
    for _ in range(130):
        assert quiet.judge(3.0 + 0.01 * rng.standard_normal(), 1.0) is None
    assert quiet.judge(9.0, 5.0) is None
