"""llm.c's schedules, checked against their definitions in ../shared/REFERENCE.md."""

import math
import os

import pytest

from conftest import REPO
from ds_train import main
from ds_train.schedule import learning_rate

LR, WARMUP, N, Q = 6e-4, 10, 110, 0.1
GPT2_124M = os.path.join(REPO, "ds_configs", "gpt2_124M.json")
MIN_LR = LR * Q


@pytest.mark.parametrize("schedule", ["cosine", "linear", "wsd"])
def test_linear_warmup_from_step_plus_one(schedule):
    assert [learning_rate(s, schedule, LR, WARMUP, N, Q) for s in range(WARMUP)] == \
        pytest.approx([LR * (s + 1) / WARMUP for s in range(WARMUP)])


@pytest.mark.parametrize("schedule", ["cosine", "linear", "wsd"])
def test_a_warmup_as_long_as_the_run_only_warms_up_and_the_run_says_so(schedule, capsys):
    """A reproduction script's -u 700 with -x 10 (a quick try) runs as llm.c runs it: every step warms up. A note
    says the rate never decays."""
    assert [learning_rate(s, schedule, LR, 700, 10, Q) for s in range(10)] == \
        pytest.approx([LR * (s + 1) / 700 for s in range(10)])
    assert main.main(["--dry_run", "1", "--ds_config", GPT2_124M, "-e", "d12", "-x", "10", "-u", "700", "-k", schedule]) == 0
    assert (f"note: -u 700 is not shorter than the 10 steps: the learning rate only warms up, to 1.4% of -l at the "
            f"last step, and -k {schedule} never decays it (as in llm.c)") in capsys.readouterr().out
    assert main.main(["--dry_run", "1", "--ds_config", GPT2_124M, "-e", "d12", "-x", "10", "-u", "9", "-k", schedule]) == 0
    assert "note: -u" not in capsys.readouterr().out


def test_cosine():
    at = lambda step: learning_rate(step, "cosine", LR, WARMUP, N, Q)
    assert at(WARMUP) == pytest.approx(LR)
    assert at(WARMUP + 50) == pytest.approx((LR + MIN_LR) / 2)  # halfway through the decay
    assert at(WARMUP + 25) == pytest.approx(MIN_LR + 0.5 * (1 + math.cos(math.pi * 0.25)) * (LR - MIN_LR))
    assert at(N) == pytest.approx(MIN_LR)


def test_linear():
    at = lambda step: learning_rate(step, "linear", LR, WARMUP, N, Q)
    assert at(WARMUP) == pytest.approx(LR)
    assert at(WARMUP + 25) == pytest.approx(LR - 0.25 * (LR - MIN_LR))
    assert at(N) == pytest.approx(MIN_LR)


def test_constant_ignores_warmup_and_decay():
    assert {learning_rate(s, "constant", LR, WARMUP, N, Q) for s in range(N)} == {LR}


def test_wsd_holds_then_decays_by_one_minus_sqrt_over_the_last_fifth():
    at = lambda step: learning_rate(step, "wsd", LR, WARMUP, N, Q)
    decay_start = int(0.8 * N)  # 88
    assert {at(s) for s in range(WARMUP, decay_start)} == {LR}
    progress = (99 - decay_start) / (N - decay_start)
    assert at(99) == pytest.approx(MIN_LR + (1 - math.sqrt(progress)) * (LR - MIN_LR))
    assert at(N) == pytest.approx(MIN_LR)


def test_unknown_schedule():
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        learning_rate(20, "step", LR, WARMUP, N, Q)
