"""Bad steps never reach the weights: a NaN loss (the NaN guard) and a planted outlier batch (-sl), on 2 ranks.

"Skipped" is checked where it matters: the checkpoint after the skipped step holds exactly the weights of the
checkpoint before it.
"""

import os
import re

import numpy as np
import pytest
import torch

from conftest import TINY, TRAIN_SHARD, train
from ds_train import checkpoint
from ds_train.data import read_shard, write_shard


def same_weights(run_dir, step_a, step_b) -> bool:
    _, a = checkpoint.load_fp32(os.path.join(run_dir, "checkpoints", checkpoint.tag(step_a)))
    _, b = checkpoint.load_fp32(os.path.join(run_dir, "checkpoints", checkpoint.tag(step_b)))
    return all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize("stage", [0, 3])  # ZeRO-1 skips by the same path in the -sl test below
def test_a_nan_loss_is_skipped_and_training_goes_on(stage, tmp_path):
    out = str(tmp_path / "run")
    run = train([*TINY, "-b", 4, "-z", stage, "-x", 3, "-n", 1, "-k", "constant", "-u", 0, "-v", 100, "-m", 1,
                 "-o", out], ranks=2, launcher="deepspeed", extra_env={"DS_TRAIN_NAN_AT_STEP": "1"}).check()
    assert run.stdout.count("skipped the update") == 1
    assert "skipped the update of step 2: non-finite loss" in run.stdout
    assert same_weights(out, 1, 2)
    assert not same_weights(out, 2, 3)  # the next step trains as usual
    assert np.isfinite(run.losses[-1])


def test_a_planted_outlier_batch_is_skipped_with_sl(tmp_path):
    """llm.c's detector needs 128 steps of history; step 141 reads a batch of random tokens."""
    tokens = np.array(read_shard(TRAIN_SHARD))
    rows = slice(140 * 256, 141 * 256 + 1)  # step 140 (0-based) with -d 256 and --shuffle 0
    tokens[rows] = np.random.default_rng(0).integers(0, 50257, rows.stop - rows.start)
    write_shard(str(tmp_path / "planted.bin"), tokens)
    out = str(tmp_path / "run")
    run = train([*TINY, "-b", 4, "-z", 1, "-x", 141, "-n", 140, "-k", "constant", "-u", 0, "-l", "1e-3", "-v", 1000,
                 "-m", 1, "--shuffle", 0, "-i", tmp_path / "planted.bin", "-sl", 3, "-o", out],
                ranks=2, launcher="deepspeed").check()
    skips = [line for line in run.stdout.splitlines() if line.startswith("skipped the update")]
    assert len(skips) == 1 and skips[0].startswith("skipped the update of step 141: loss z-score "), skips
    planted_loss = float(re.search(r"^step  141/141 \| loss ([\d.]+)", run.stdout, re.M).group(1))
    assert planted_loss > max(run.losses[-20:]) + 3  # the planted batch is what it was judged on
    assert same_weights(out, 140, 141)
