"""--auto_fit: the chosen setting fits the budget by the estimate, keeps the total batch and what the command
line fixed, and starts the run with it; a run that cannot fit says what the smallest setting needs."""

import os
import re

import pytest

from ds_train import autofit, config, main, memory
from ds_train.errors import UserError
from conftest import CPU_CONFIG, REPO, TINY, settings_table, train

CHOICE = re.compile(r"^auto_fit: -b (\d+) -r (\d) -z (\d) --offload (\w+) \(estimated ([\d.]+) GiB of ([\d.]+) GiB", re.M)
DRY_RUN = re.compile(r"^dry run \| ranks (\d+) \|.* tokens per step (\d+) \| micro-batch (\d+) x (\d+) \| grad accumulation (\d+)", re.M)
GPT2_1558M = os.path.join(REPO, "ds_configs", "gpt2_1558M.json")


def plan(capsys, *argv, ranks=1):
    """A --dry_run with --auto_fit 1 -> (B, -r, -z, offload, estimate GiB, budget GiB, its output)."""
    code = main.main(["--dry_run", str(ranks), "--auto_fit", "1", *map(str, argv)])
    out, err = capsys.readouterr()
    assert code == 0, err
    B, r, z, offload, estimate, budget = CHOICE.search(out).groups()
    ranks_, tokens, micro, T, accum = map(int, DRY_RUN.search(out).groups())
    assert (micro, ranks_) == (int(B), ranks) and micro * T * ranks * accum == tokens  # -d kept by accumulation
    return int(B), int(r), int(z), offload, float(estimate), float(budget), out


def estimate_gib(argv, ranks=1):
    run, _, _ = config.resolve(config.parse_args(list(map(str, argv))), ranks, has_gpu=True)
    return dict(memory.estimate(run))["total"] / memory.GiB


def test_the_estimate_of_recompute_level_1_saves_what_the_h200_measured():
    """-r 1 against -r 0 at ZeRO-1, d12 B=64 x 8: the peaks measured on an H200 (21.39 and 16.89 GiB,
    bench/results/h200_2026-12-02_recompute_zero3/r1_ab/), within 0.5 GiB. (The H100's figures of 2026-11-25
    predate -r 1's recompute inside the fused MLP, which keeps 2 C less per layer and token.)"""
    measured_gib = 21.39 - 16.89
    base = ["--ds_config", GPT2_1558M, "-e", "d12", "-b", 64, "-t", 1024, "-d", 524288, "-z", 1]
    saved = estimate_gib([*base, "-r", 0]) - estimate_gib([*base, "-r", 1])
    assert saved == pytest.approx(measured_gib, abs=0.5)


@pytest.mark.parametrize("argv, measured_gib", [
    (["-e", "d12", "-b", 8, "-d", 524288, "-r", 0], 5.36),  # 64 micro-steps: the bf16 gradients released each
    (["-e", "d48", "-b", 16, "-d", 131072, "-r", 0], 64.98),
    (["-e", "d48", "-b", 16, "-d", 16384, "-r", 3], 29.83),  # -r 3: the bf16 gradients outgrow the activations
    (["-e", "d24", "-b", 32, "-d", 32768, "-r", 3], 8.79),
])
def test_the_zero1_estimate_is_close_to_the_measured_peaks(argv, measured_gib):
    """bf16 ZeRO-1 peaks with the bf16 gradients released after their fold, measured on the H100
    (bench/results/h100_2026-11-25_release/) and, for -r 3, on an H200 with the code of now
    (bench/results/h200_2026-12-05_lease6/r3/; the H100's 32.1 and 8.9 GiB were of the code of 2026-11-25): the
    estimate at most 0.75 GiB below them (auto_fit keeps 10% of the GPU free) and 0.5 GiB above."""
    estimate = estimate_gib(["--ds_config", GPT2_1558M, "-t", 1024, "-z", 1, *argv])
    assert measured_gib - 0.75 <= estimate <= measured_gib + 0.5


def test_d48_on_an_80gb_gpu_gets_the_setting_measured_to_fit(capsys):
    """90% of an H100's 79.2 GiB: the largest micro-batch without recompute, as measured (65.0 GiB at B=16),
    with the total batch of 0.5M tokens kept through 32 micro-steps."""
    B, r, z, offload, estimate, budget, out = plan(capsys, "--ds_config", GPT2_1558M, "-e", "d48", "-d", 524288,
                                                   "--gpu_memory", 71.3)
    assert (B, r, offload) == (16, 0, "none") and estimate <= budget == 71.3
    assert "grad accumulation 32" in out
    larger = ["--ds_config", GPT2_1558M, "-e", "d48", "-d", 524288, "-b", 32, "-r", 0, "-z", z]
    assert estimate_gib(larger) > budget  # the next micro-batch would not have fit


def test_a_smaller_gpu_trades_speed_for_memory_and_says_what_did_not_fit(capsys):
    *_, big_out = plan(capsys, "--ds_config", GPT2_1558M, "-e", "d48", "-d", 524288, "--gpu_memory", 71.3)
    B, r, z, offload, estimate, budget, out = plan(capsys, "--ds_config", GPT2_1558M, "-e", "d48", "-d", 524288,
                                                   "--gpu_memory", 30)
    assert estimate <= 30 and (B < 16 or r > 0 or offload != "none")
    assert "faster but too big:" in out and "fits, slower:" in out
    assert int(re.search(r"expects about ([\d,]+) tokens/s", out).group(1).replace(",", "")) < \
        int(re.search(r"expects about ([\d,]+) tokens/s", big_out).group(1).replace(",", ""))


def test_flags_on_the_command_line_are_kept(capsys):
    B, r, z, offload, *_, out = plan(capsys, "--ds_config", GPT2_1558M, "-e", "d48", "-d", 524288, "--gpu_memory", 71.3,
                                     "-z", 3, "-r", 1)
    assert (z, r) == (3, 1) and "is the fastest setting that fits, out of" in out and "with -r 1 -z 3" in out


def test_offload_when_nothing_else_fits(capsys):
    """GPT-3 2.7B in 24 GiB: only with the optimizer state (16 bytes per parameter) in CPU memory."""
    B, r, z, offload, estimate, budget, out = plan(capsys, "--ds_config", GPT2_1558M, "-e", "gpt3:c2560", "-t", 2048,
                                                   "-d", 524288, "--gpu_memory", 24, "--host_memory", 112)
    assert offload in ("optimizer", "all") and estimate <= 24
    assert re.search(r"^offloaded per rank \(estimate\): [\d.]+ GiB of CPU memory", out, re.M)
    host = float(re.search(r"^auto_fit: host memory per rank \(estimate\): ([\d.]+) GiB", out, re.M).group(1))
    assert host <= 112


def test_offload_must_fit_the_host_too(capsys):
    """GPT-3 6.7B: its offloaded optimizer state alone is 16 bytes per parameter (100 GiB); an H100 machine
    with 125 GiB of host memory (112 usable) cannot hold it, as a real run there found (killed at 122.9 GiB)."""
    argv = ["--ds_config", GPT2_1558M, "--dry_run", "1", "--auto_fit", "1", "-e", "gpt3:c4096", "-t", "2048",
            "-d", "524288", "--gpu_memory", "71.3", "--host_memory", "112"]
    assert main.main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(r"no setting fits in 71.3 GiB .* needs [\d.]+ GiB per GPU and 1 x [\d.]+ GiB of host memory, "
                     r"more than the 112.0 GiB usable", err)
    assert main.main([*argv[:-1], "300"]) == 0  # a bigger host: the optimizer goes there
    assert re.search(r"^auto_fit: .* --offload (optimizer|all) ", capsys.readouterr().out, re.M)


@pytest.mark.parametrize("argv, message", [
    (["-e", "d48", "-d", 524288, "--gpu_memory", 0.5],
     r"--auto_fit 1: no setting fits in 0.5 GiB \(--gpu_memory 0.5 GiB\); the smallest, -b 1 -r 3 -z 3 --offload all, needs [\d.]+ GiB per GPU"),
    (["-e", "d48", "-d", 524288, "-r", 0, "-z", 1, "--gpu_memory", 5],
     r"no setting with -r 0 -z 1 fits in 5.0 GiB"),
    (["-e", "d48", "-d", 524288], r"--auto_fit 1: no GPU here to fit; give --gpu_memory GIB"),
])
def test_what_cannot_fit_is_refused_in_one_line(capsys, argv, message):
    assert main.main(["--ds_config", GPT2_1558M, "--dry_run", "1", "--auto_fit", "1", *map(str, argv)]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1


def test_the_total_batch_must_be_known(capsys, tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 1}}')
    assert main.main(["--ds_config", str(ds), "--dry_run", "1", "--auto_fit", "1", "--gpu_memory", "70"]) == 2
    assert "--auto_fit 1: give the total batch -d (tokens per step)" in capsys.readouterr().err


def test_a_real_run_trains_with_the_chosen_setting():
    """On 1 CPU rank with a budget that the tiny model's B=8 without recompute exceeds: the run starts with the
    setting auto_fit printed, and gradient accumulation keeps -d 256."""
    base = ["--ds_config", CPU_CONFIG, *TINY, "-d", 256]
    budget = (estimate_gib([*base, "-b", 4, "-r", 0, "-z", 1]) + estimate_gib([*base, "-b", 8, "-r", 0, "-z", 1])) / 2
    run = train([*TINY, "-d", 256, "-x", 2, "-v", 2, "-m", 1, "--auto_fit", 1, "--gpu_memory", f"{budget:.6f}"]).check()
    B, r, z, offload, _, _ = CHOICE.search(run.stdout).groups()
    assert estimate_gib([*base, "-b", B, "-r", r, "-z", z, "--offload", offload]) <= budget and len(run.losses) == 2
    table = settings_table(run.stdout)
    assert (table["micro batch size B"], table["zero_stage"], table["offload"]) == (B, z, offload)
    assert table["recompute"].startswith(r) and int(table["grad_accum_steps"]) * int(B) * 32 == 256


def test_the_host_memory_is_shared_by_the_ranks_of_one_node_only():
    """16 ranks, 8 to a node as the launcher says: the offloaded state of 8 ranks must fit a node's host memory,
    not that of all 16 (unknown, every rank counts, as the refusal says)."""
    args = config.parse_args(["--ds_config", GPT2_1558M, "--auto_fit", "1", "-e", "gpt3:c4096", "-t", "2048",
                              "-d", "524288", "--gpu_memory", "6", "--host_memory", "400"])
    said = []
    chosen = autofit.fit(args, 16, True, None, None, None, said.append, local_ranks=8)
    assert chosen.offload != "none" and "8 rank(s) on this node, 400.0 GiB usable" in "\n".join(said)
    with pytest.raises(UserError, match=r"and 16 x [\d.]+ GiB of host memory, more than the 400.0 GiB usable"):
        autofit.fit(args, 16, True, None, None, None, said.append)
