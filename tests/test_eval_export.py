"""Evaluation, export and import: HellaSwag against transformers, exact round trips, every ZeRO stage, one-line errors."""

import csv
import dataclasses
import gzip
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import (BIN, CPU_CONFIG, MAIN, REPO, STEPS, TINY, VAL_SHARD, child_env, free_port, shared_path,
                      train, zero_run)
from ds_train import convert, evaluate, export, plot
from ds_train.config import DEFAULT_HELLASWAG
from ds_train.evals import score_endings
from ds_train.data import read_shard, write_shard
from ds_train.hellaswag import Example, load_examples, load_rendered, render, write_eval_file
from ds_train.model import GPT, config_from_descriptor
from test_training import run_on_bf16_engine

HF_TOLERANCE = 1e-5  # fp32 logits, ours vs transformers' GPT2LMHeadModel


def trained_like_state(descriptor="gpt2:d2:c64:h2", seed=3):
    """A model whose every tensor (biases and LayerNorm too) holds distinct values, as after training."""
    cfg = config_from_descriptor(descriptor)
    model = GPT(cfg, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "transformer.wte.weight":
                p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return cfg, model


def states_equal(a: dict, b: dict, transform=lambda t: t):
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(transform(a[name]), b[name]), name


# ---------------------------------------------------------------------------------------------- formats

def test_llmc_round_trips_are_exact_and_the_file_has_llmc_layout(tmp_path):
    cfg, model = trained_like_state()
    state = model.state_dict()
    convert.write_llmc(str(tmp_path / "m.bin"), cfg, state)
    header = np.fromfile(str(tmp_path / "m.bin"), dtype="<i4", count=8).tolist()
    assert header == [20240326, 3, 1024, 50257, 2, 2, 64, 50304]
    assert os.path.getsize(tmp_path / "m.bin") == 1024 + 4 * cfg.num_params
    # the first tensor is wte (Vp x C), and the stacked layers follow in llm.c's order: ln1w of both layers next
    raw = np.fromfile(str(tmp_path / "m.bin"), dtype="<f4", offset=1024)
    wte_size = 50304 * 64
    assert np.array_equal(raw[:wte_size], state["transformer.wte.weight"].numpy().ravel())
    ln1 = raw[wte_size + 1024 * 64:wte_size + 1024 * 64 + 2 * 64]
    assert np.array_equal(ln1, torch.cat([state["transformer.h.0.ln_1.weight"], state["transformer.h.1.ln_1.weight"]]).numpy())
    read_cfg, read_state = convert.read_llmc(str(tmp_path / "m.bin"))
    assert read_cfg == cfg
    states_equal(state, read_state)
    convert.write_llmc(str(tmp_path / "b.bin"), cfg, state, torch.bfloat16)
    assert np.fromfile(str(tmp_path / "b.bin"), dtype="<i4", count=2).tolist() == [20240326, 5]
    assert os.path.getsize(tmp_path / "b.bin") == 1024 + 2 * cfg.num_params
    states_equal(state, convert.read_llmc(str(tmp_path / "b.bin"))[1], lambda t: t.bfloat16().float())


def test_hf_export_loads_in_transformers_and_matches_our_logits(tmp_path):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    cfg, model = trained_like_state()
    convert.write_hf(str(tmp_path / "hf"), cfg, model.state_dict())
    hf = GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    idx = torch.randint(0, 50257, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model.eval()(idx), hf(idx).logits
    assert theirs.shape == ours.shape == (2, 48, 50257)
    assert (ours - theirs).abs().max().item() < HF_TOLERANCE
    assert AutoTokenizer.from_pretrained(str(tmp_path / "hf"))("Hello world")["input_ids"] == [15496, 995]
    read_cfg, read_state = convert.read_hf(str(tmp_path / "hf"))  # ours -> HF -> ours
    assert read_cfg == cfg
    states_equal(model.state_dict(), read_state)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_export_from_every_zero_stage_checkpoint(stage, tmp_path, capsys):
    """A 2-rank run's checkpoint, consolidated: the same weights whatever the stage, and the run's own model."""
    run = zero_run(stage)
    assert os.path.exists(os.path.join(run.output_dir, "DONE_%08d" % STEPS))
    assert export.main([run.output_dir, "--format", "llmc", "--output", str(tmp_path / "m.bin")]) == 0
    _, weights = convert.read_llmc(str(tmp_path / "m.bin"))
    _, reference = convert.load_weights(zero_run(1).output_dir, "--model")
    # ZeRO-0 and ZeRO-3 reduce gradients in other orders (~1e-7 apart); after 8 Adam steps that is at most
    # 1e-4 (ZeRO-0: 5e-5 seen, in a few weights whose second moment is near zero) and 1e-5 (ZeRO-3: 8e-7 seen).
    # ZeRO-2 matches ZeRO-1 exactly.
    tolerance = {0: 1e-4, 1: 0, 2: 0, 3: 1e-5}[stage]
    for name in weights:
        torch.testing.assert_close(weights[name], reference[name], rtol=0, atol=tolerance)
    # the exported model gives the run's last val loss (2 ranks x 2 batches of 4x32 = 1 process x 4 batches)
    assert evaluate.main(["--model", str(tmp_path / "m.bin"), "-j", VAL_SHARD, "-b", "4", "-t", "32", "-m", "4"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["val_loss"] == pytest.approx(run.val_losses[-1], abs=2e-5)


# two steps of a bf16 engine, saved as main.py saves; then every rank gathers each parameter's fp32 master weight
# through DeepSpeed's own API, which rank 0 keeps as the reference
BF16_SAVE_SCRIPT = """
from deepspeed.utils import safe_get_full_fp32_param
from ds_train import checkpoint
from ds_train.resume import run_state
from ds_train.outliers import UpdateGuard
gen = torch.Generator().manual_seed(0)
for _ in range(2):
    batch = torch.randint(0, 50257, (run.B, run.T + 1), generator=gen).to(engine.device)
    engine.backward(engine(batch[:, :-1], batch[:, 1:]))
    engine.step()
checkpoint.save(engine, OUT, 2, run_state(run, 2, UpdateGuard(0, 0)), {})
master = {name: safe_get_full_fp32_param(p).clone() for name, p in engine.module.named_parameters()}
if place.rank == 0:
    torch.save(master, OUT + "/master.pt")
"""


@pytest.mark.parametrize("stage", [1, 3])  # ZeRO-1's BF16_Optimizer; ZeRO-3's flat partitions (their export failed)
def test_bf16_checkpoints_export_the_engines_fp32_master_weights(stage, tmp_path):
    out = tmp_path / "run"
    run_on_bf16_engine(tmp_path, f"OUT = {str(out)!r}\n" + BF16_SAVE_SCRIPT, stage=stage, ranks=2)
    master = torch.load(out / "master.pt")
    assert export.main([str(out), "--format", "llmc", "--output", str(tmp_path / "m.bin")]) == 0
    _, weights = convert.read_llmc(str(tmp_path / "m.bin"))
    assert set(weights) == set(master) | {"lm_head.weight"}
    for name in master:
        assert torch.equal(weights[name], master[name]), name


def test_import_llmc_hf_and_checkpoints_as_the_starting_point(tmp_path, capsys):
    cfg, model = trained_like_state()
    convert.write_llmc(str(tmp_path / "m.bin"), cfg, model.state_dict())
    convert.write_hf(str(tmp_path / "hf"), cfg, model.state_dict())

    def val_loss_of(path) -> float:
        assert evaluate.main(["--model", str(path), "-j", VAL_SHARD, "-b", "4", "-t", "32", "-m", "2"]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])["val_loss"]
    checkpointed = zero_run(1).output_dir  # a ds_train run directory: its newest complete checkpoint
    for source, expected in ((tmp_path / "m.bin", val_loss_of(tmp_path / "m.bin")), (tmp_path / "hf", val_loss_of(tmp_path / "m.bin")),
                             (checkpointed, val_loss_of(checkpointed))):
        run = train(["-e", source, "-t", 32, "-b", 4, "-x", 1, "-v", 1, "-m", 2, "-s", 0], launcher="python").check()
        assert f"| model                 | {source}" in run.stdout
        assert run.val_losses[0] == pytest.approx(expected, abs=1e-5)  # step 0: before any update


# ---------------------------------------------------------------------------------------------- HellaSwag

def test_hellaswag_scores_agree_with_transformers_example_by_example(tmp_path):
    from transformers import GPT2LMHeadModel

    examples = load_rendered(shared_path("hellaswag", "hellaswag_val.jsonl"))[:200]
    cfg, weights = convert.load_weights(zero_run(1).output_dir, "--model")  # a trained model
    model = GPT(cfg).eval()
    model.load_state_dict(weights)
    convert.write_hf(str(tmp_path / "hf"), cfg, weights)
    hf = GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    ours_mean, ours_sum = [], []
    for i in range(0, len(examples), 3):  # batches of 3 examples, padded: 12 rows per forward
        with torch.no_grad():
            mean, summed = score_endings(model, examples[i:i + 3], torch.device("cpu"))
        ours_mean += mean.tolist()
        ours_sum += summed.tolist()
    for e, mean, summed in zip(examples, ours_mean, ours_sum):
        # independently: transformers' logits for the four rows (right-padded, which causal attention ignores),
        # then the loss of each ending token from the log-softmax
        rows = [e.ctx_tokens + ending for ending in e.ending_tokens]
        tokens = torch.tensor([row + [0] * (max(map(len, rows)) - len(row)) for row in rows])
        n = len(e.ctx_tokens)
        with torch.no_grad():
            logits = hf(tokens).logits
        theirs = []
        for r, ending in enumerate(e.ending_tokens):  # the positions that predict the ending's tokens
            logp = torch.log_softmax(logits[r, n - 1:n - 1 + len(ending)].double(), -1)
            theirs.append([-logp[j, token].item() for j, token in enumerate(ending)])
        assert mean == pytest.approx([sum(t) / len(t) for t in theirs], abs=1e-4)
        assert summed == pytest.approx([sum(t) for t in theirs], abs=1e-3)
        assert int(np.argmin(mean)) == int(np.argmin([sum(t) / len(t) for t in theirs]))


def test_distributed_hellaswag_on_two_ranks_equals_one(tmp_path):
    cfg, model = trained_like_state()
    convert.write_llmc(str(tmp_path / "m.bin"), cfg, model.state_dict())
    args = ["--model", tmp_path / "m.bin", "--hellaswag", "--limit", 41, "-b", 2, "-t", 256]  # 41: an uneven split
    one = subprocess.run([sys.executable, "-m", "ds_train.evaluate", *map(str, args)], cwd=REPO, env=child_env(threads=2),
                         capture_output=True, text=True)
    two = subprocess.run([os.path.join(BIN, "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
                          os.path.join(REPO, "ds_train", "evaluate.py"), *map(str, args)], cwd=REPO, env=child_env(),
                         capture_output=True, text=True)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    one_result = json.loads(one.stdout.strip().splitlines()[-1])
    two_result = json.loads([l for l in two.stdout.splitlines() if l.startswith('{"model"')][-1])
    assert one_result["examples"] == two_result["examples"] == 41
    assert one_result == two_result
    assert "2 process(es)" in two.stdout


def test_the_val_loss_and_hellaswag_give_up_when_their_stop_check_says_so():
    """The check a stop signal answers (distributed.StopSignal.requested, a collective): the val loss asks it every
    VAL_BATCHES_PER_STOP_CHECK batches, HellaSwag before each forward after its first; on yes each returns None,
    with the model back in training mode."""
    from ds_train.data import ShardLoader
    from ds_train.evals import VAL_BATCHES_PER_STOP_CHECK, hellaswag, val_loss
    model = GPT(config_from_descriptor("gpt2:d1:c32:h2"))
    loader = ShardLoader(VAL_SHARD, 2, 16, 0, 1, shuffle=False, flag="-j")
    examples = load_rendered(DEFAULT_HELLASWAG)[:6]
    asked = []

    def stop_after(n):
        def stop():
            asked.append(len(asked))
            return len(asked) > n
        return stop

    full = val_loss(model, loader, 2 * VAL_BATCHES_PER_STOP_CHECK + 1, stop=stop_after(99))
    assert len(asked) == 2 and full == val_loss(model, loader, 2 * VAL_BATCHES_PER_STOP_CHECK + 1)
    asked.clear()
    assert val_loss(model, loader, 2 * VAL_BATCHES_PER_STOP_CHECK + 1, stop=stop_after(1)) is None and len(asked) == 2
    assert model.training
    asked.clear()
    result = hellaswag(model, examples, token_budget=1, stop=stop_after(99))  # one example a forward: 6 forwards
    assert len(asked) == 5 and result == hellaswag(model, examples, token_budget=1)
    asked.clear()
    assert hellaswag(model, examples, token_budget=1, stop=stop_after(2)) is None and len(asked) == 3
    assert model.training


def test_in_the_training_loop_hellaswag_main_log_and_the_deepspeed_monitor(tmp_path):
    """At ZeRO-3 with 29 examples on 2 ranks (15 and 14 forwards of one example each): the ranks must keep in
    step through every forward, as ZeRO-3 gathers the weights collectively."""
    hs = tmp_path / "hs.jsonl"
    hs.write_text("".join(open(shared_path("hellaswag", "hellaswag_val.jsonl")).readlines()[:29]))
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3},
                              "csv_monitor": {"enabled": True, "output_path": str(tmp_path / "csv"), "job_name": "run"}}))
    out = tmp_path / "out"
    run = train([*TINY, "-b", 4, "-x", 4, "-v", 2, "-m", 1, "-h", 1, "--hellaswag_data", hs, "-o", out], ranks=2,
                launcher="env", ds_config=str(ds)).check()
    evals = [line for line in (out / "main.log").read_text().splitlines() if " eval:" in line]
    assert [line.split()[0] for line in evals] == ["s:2", "s:4"]  # every -v steps after 0, and the last step
    assert run.stdout.count("HellaSwag: ") == 2 and "/29 = " in run.stdout
    assert re.search(r"^eval at step 2: [\d.]+ s \(val loss [\d.]+ s, HellaSwag [\d.]+ s\)$", run.stdout, re.M)
    rows = lambda name: list(csv.reader(open(tmp_path / "csv" / "run" / f"{name}.csv")))[1:]
    assert [int(r[0]) for r in rows("Train_loss")] == [0, 1, 2, 3]
    assert [float(r[1]) for r in rows("Train_loss")] == pytest.approx(run.losses, abs=1e-5)
    assert [float(r[1]) for r in rows("Val_loss")] == pytest.approx(run.val_losses, abs=1e-5)
    assert [int(r[0]) for r in rows("Eval_hellaswag_acc_norm")] == [2, 4]
    for name in ("Train_lr", "Train_grad_norm", "Train_tokens_per_s", "Eval_hellaswag_acc"):
        assert len(rows(name)) > 0, name


def test_v0_evaluates_at_the_last_step_only(tmp_path):
    """-v 0, as llm.c's train_gpt2.py: no val loss at step 0 or in between, HellaSwag likewise; both at the end."""
    hs = tmp_path / "hs.jsonl"
    with gzip.open(DEFAULT_HELLASWAG, "rt") as f:  # the shipped copy, which -h 1 reads by default
        hs.write_text("".join(f.readlines()[:5]))
    out = tmp_path / "out"
    run = train([*TINY, "-b", 4, "-x", 3, "-v", 0, "-m", 1, "-h", 1, "--hellaswag_data", hs, "-o", out]).check()
    assert len(run.losses) == 3 and len(run.val_losses) == 1 and run.stdout.count("HellaSwag: ") == 1
    logged = [line.split()[:2] for line in (out / "main.log").read_text().splitlines() if "trl:" not in line]
    assert [(step, kind.split(":")[0]) for step, kind in logged] == [("s:3", "tel"), ("s:3", "eval")]


# ---------------------------------------------------------------------------------------------- plot

def test_plot_draws_runs_into_a_png(tmp_path, capsys):
    for name, offset in (("a", 0.0), ("b", 0.3)):
        (tmp_path / name).mkdir()
        lines = [f"s:{s} trl:{8 * 0.99 ** s + offset:.4f} lr:0.000600 norm:1.00" for s in range(200)]
        lines += [f"s:{s} tel:{8 * 0.99 ** s + offset + 0.1:.4f}" for s in range(0, 201, 50)]
        lines += [f"s:{s} eval:{0.25 + s / 4000:.4f}" for s in range(50, 201, 50)]
        (tmp_path / name / "main.log").write_text("\n".join(lines) + "\n")
    assert plot.main([str(tmp_path / "a"), str(tmp_path / "b" / "main.log"), "--output", str(tmp_path / "p.png")]) == 0
    data = (tmp_path / "p.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20000
    runs = [plot.read_log(str(tmp_path / n)) for n in ("a", "b")]
    assert [len(r.train) for r in runs] == [200, 200] and [len(r.hellaswag) for r in runs] == [4, 4]


def test_plot_skips_nan_losses_and_says_what_it_wrote(tmp_path, capsys):
    """ds_train logs trl:nan for a skipped step: the smoothed curve goes on past it to the last step."""
    lines = [f"s:{s} trl:{'nan' if s == 30 else 'inf' if s == 31 else f'{8 * 0.99 ** s:.4f}'} lr:0.000600 norm:1.00"
             for s in range(301)]
    (tmp_path / "main.log").write_text("\n".join(lines + ["s:0 tel:8.1000", "s:300 tel:nan"]) + "\n")
    steps, losses, smoothed = plot.train_curve(plot.read_log(str(tmp_path)))
    assert steps[-1] == 300 and len(steps) == 299 and 30 not in steps and 31 not in steps
    assert all(np.isfinite(smoothed)) and smoothed[-1] < smoothed[28]
    # no extension: .png is added, and the path printed is the file written; an existing folder gets main.png
    (tmp_path / "plots").mkdir()
    for output, written in ((tmp_path / "plotfile", tmp_path / "plotfile.png"), (tmp_path / "plots", tmp_path / "plots" / "main.png"),
                            (tmp_path / "p.svg", tmp_path / "p.svg")):
        assert plot.main([str(tmp_path), "--output", str(output)]) == 0
        assert capsys.readouterr().out == f"note: {tmp_path}: nan/inf loss at 3 step(s) (30, 31, 300), left out of the curves\n" \
                                          f"wrote {written}\n"
        assert written.stat().st_size > 10000
    assert b"<svg" in (tmp_path / "p.svg").read_bytes()[:1000]


# ---------------------------------------------------------------------------------------------- bad input

def test_bad_model_files_and_paths(tmp_path, capsys):
    cfg, model = trained_like_state()
    good = tmp_path / "m.bin"
    convert.write_llmc(str(good), cfg, model.state_dict())
    data = good.read_bytes()
    (tmp_path / "magic.bin").write_bytes(np.int32(1234).tobytes() + data[4:])
    (tmp_path / "short.bin").write_bytes(data[:-10])
    (tmp_path / "v4.bin").write_bytes(data[:4] + np.int32(4).tobytes() + data[8:])

    def error(module, argv) -> str:
        assert module.main([*map(str, argv)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        return err.strip().split("error: ", 1)[1]
    assert error(evaluate, ["--model", tmp_path / "magic.bin"]) == \
        f"{tmp_path / 'magic.bin'}: bad magic 1234, expected 20240326 (not an llm.c model file)"
    assert error(evaluate, ["--model", tmp_path / "short.bin"]).startswith(f"{tmp_path / 'short.bin'}: {len(data) - 10} bytes, but its header")
    assert "unsupported llm.c model version 4" in error(export, [tmp_path / "v4.bin", "--format", "hf", "--output", tmp_path / "x"])
    assert error(export, [tmp_path / "nowhere", "--format", "llmc", "--output", tmp_path / "o.bin"]) == \
        f"CHECKPOINT {tmp_path / 'nowhere'}: expected an llm.c model .bin, a Hugging Face GPT-2 folder or a ds_train checkpoint"
    assert error(export, [good, "--format", "llmc", "--output", tmp_path / "no" / "dir" / "o.bin"]).startswith("--output")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").mkdir()
    assert error(export, [tmp_path / "run", "--format", "hf", "--output", tmp_path / "hf"]) == \
        f"{tmp_path / 'run'}: no complete checkpoint (no DONE_* marker, or its checkpoint is damaged)"
    assert error(evaluate, ["--model", good, "--hellaswag", "--hellaswag_data", tmp_path / "none.jsonl"]) == \
        f"--hellaswag_data {tmp_path / 'none.jsonl'}: no such file (prepare it with python -m ds_train.prepare hellaswag)"
    assert error(plot, [tmp_path / "nolog"]) == f"{tmp_path / 'nolog'}: cannot read: No such file or directory"
    assert error(plot, [good]) == f"{good}: not a text file (not UTF-8: invalid continuation byte); expected a main.log"
    (tmp_path / "diverged.log").write_text("s:0 trl:nan lr:0.1 norm:1\ns:1 trl:inf lr:0.1 norm:1\n")
    assert error(plot, [tmp_path / "diverged.log"]) == f"{tmp_path / 'diverged.log'}: every loss in it is nan or inf; there is nothing to plot"
    (tmp_path / "main.log").write_text("s:0 trl:10.9 lr:0.1 norm:1\ns:1 trl:10.5 lr:0.1 norm:1\n")
    assert error(plot, [tmp_path, "--output", tmp_path / "no" / "p.png"]) == f"--output {tmp_path / 'no' / 'p.png'}: no such folder {tmp_path / 'no'}"
    assert re.fullmatch(rf"--output {tmp_path / 'p.xyz'}: unsupported format \.xyz; expected one of .*\bpdf, .*\bpng, .*\bsvg\b.*",
                        error(plot, [tmp_path, "--output", tmp_path / "p.xyz"]))
    assert error(plot, [tmp_path, "--output", "/sys/p.png"]) == "--output /sys/p.png: cannot write: Permission denied"
    # a model file whose shape does not fit the flags: the trainer refuses it before starting
    proc = subprocess.run([sys.executable, MAIN, "--ds_config", CPU_CONFIG, "-e", str(good), "-t", "2048"], cwd=REPO,
                          env=child_env(), capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == \
        f"ds_train: error: -t 2048: the sequence length must be between 1 and the model's 1024 (-e {good})"


def _error(capsys, module, argv) -> str:
    assert module.main([*map(str, argv)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip().split("error: ", 1)[1]


HS_EXAMPLES = [Example(f"Example {i} starts here, goes on for a while and then", ("goes on.", "stops.", "turns back.",
                                                                                  "waits."), i % 4) for i in range(5)]


def test_bad_hellaswag_files_get_one_line_errors(tmp_path, capsys):
    """Truncated or damaged HellaSwag files, and examples that do not fit the model, are named with what was
    expected, in evaluate and in training alike (both read them through ds_train.hellaswag)."""
    cfg, model = trained_like_state()
    good = tmp_path / "m.bin"
    convert.write_llmc(str(good), cfg, model.state_dict())
    evaluate_hellaswag = lambda data: _error(capsys, evaluate, ["--model", good, "--hellaswag", "--hellaswag_data", data])
    write_eval_file(str(tmp_path / "hs.bin"), HS_EXAMPLES)
    data = (tmp_path / "hs.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[:-7])
    assert evaluate_hellaswag(tmp_path / "cut.bin") == (f"{tmp_path / 'cut.bin'}: the file ends inside example 4 of the 5 "
                                                        f"its header lists ({len(data) - 7} bytes: truncated?)")
    (tmp_path / "long.bin").write_bytes(data + bytes(4))
    assert evaluate_hellaswag(tmp_path / "long.bin") == \
        f"{tmp_path / 'long.bin'}: 4 bytes follow the 5 examples its header lists, expected none (corrupt header?)"
    shard = tmp_path / "shard.bin"  # a token shard given as the eval file
    write_shard(str(shard), np.arange(1000))
    assert evaluate_hellaswag(shard) == (f"{shard}: not an llm.c eval file (expected magic 20240522, version 1; found "
                                         "magic 20240520, version 1)")
    stream = np.frombuffer(data, dtype="<u2").copy()
    stream[512 + 6] = 60000  # the first context token of example 0
    (tmp_path / "oov.bin").write_bytes(stream.tobytes())
    assert evaluate_hellaswag(tmp_path / "oov.bin") == \
        f"{tmp_path / 'oov.bin'}: example 0: token id 60000, expected ids below the model's vocab_size 50257 (--model {good})"

    jsonl = "".join(json.dumps({"ctx": e.ctx, "endings": list(e.endings), "label": e.label}) + "\n" for e in HS_EXAMPLES)
    (tmp_path / "blank_lines.jsonl").write_text("\n" + jsonl + "\n\n")  # blank lines hold no example: read past
    assert load_examples(str(tmp_path / "blank_lines.jsonl")) == HS_EXAMPLES
    gz = gzip.compress(jsonl.encode() * 50)
    (tmp_path / "cut.jsonl.gz").write_bytes(gz[:len(gz) // 2])
    assert evaluate_hellaswag(tmp_path / "cut.jsonl.gz") == (
        f"{tmp_path / 'cut.jsonl.gz'}: cannot read: truncated gzip file: Compressed file ended before the "
        "end-of-stream marker was reached")

    short_cfg = dataclasses.replace(cfg, block_size=8)
    short = tmp_path / "ctx8.bin"
    convert.write_llmc(str(short), short_cfg, GPT(short_cfg).state_dict())
    (tmp_path / "hs.jsonl").write_text(jsonl)
    longest = len(render(HS_EXAMPLES[0]).ctx_tokens) + max(map(len, render(HS_EXAMPLES[0]).ending_tokens))
    assert _error(capsys, evaluate, ["--model", short, "-t", 8, "--hellaswag", "--hellaswag_data", tmp_path / "hs.jsonl"]) == (
        f"{tmp_path / 'hs.jsonl'}:1: context and ending are {longest} tokens, more than the 9 that the model (--model "
        f"{short}) can score with its context of 8 tokens")


def test_evaluate_refuses_flags_that_would_be_ignored(tmp_path, capsys):
    cfg, model = trained_like_state()
    good = tmp_path / "m.bin"
    convert.write_llmc(str(good), cfg, model.state_dict())
    hs = tmp_path / "hs.jsonl"
    assert _error(capsys, evaluate, ["--model", good, "--hellaswag_data", hs, "-g", 4]) == \
        f"--hellaswag_data {hs}: applies to HellaSwag, which runs only with --hellaswag"
    assert _error(capsys, evaluate, ["--model", good, "--limit", 5, "-g", 4]) == \
        "--limit 5: applies to HellaSwag, which runs only with --hellaswag"
    assert _error(capsys, evaluate, ["--model", good, "-m", 5, "--hellaswag"]) == \
        "-m 5: val batches need -j, the val shards to read them from"
    assert _error(capsys, evaluate, ["--model", good]) == \
        f"--model {good}: loads, but there is nothing to evaluate: give -j (val loss), --hellaswag or -g (a sample)"
    assert _error(capsys, evaluate, ["--model", good, "-g", 4, "-b", 0]) == "-b 0: expected a number >= 1"
    assert _error(capsys, evaluate, ["--model", good, "-g", -1]) == "-g -1: expected a number >= 0"


def test_evaluate_val_shards_out_of_vocabulary_and_shorter_than_m(tmp_path, capsys):
    cfg, model = trained_like_state()
    good = tmp_path / "m.bin"
    convert.write_llmc(str(good), cfg, model.state_dict())
    oov = tmp_path / "oov.bin"
    write_shard(str(oov), np.full(1000, 60000))
    assert _error(capsys, evaluate, ["--model", good, "-j", oov, "-b", 4, "-t", 32]) == (
        f"{oov}: the token at index 0 is 60000, expected ids below the model's vocab_size 50257 (a shard tokenized "
        "for another vocabulary, or corrupt)")
    val = tmp_path / "val.bin"
    write_shard(str(val), np.asarray(read_shard(VAL_SHARD))[:1000])
    assert evaluate.main(["--model", str(good), "-j", str(val), "-b", "4", "-t", "32", "-m", "100"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"note: -m 100: the val split (-j {val}) holds 7 batches of B*T*world = 128 tokens; the val loss reads those 7" in out
    assert any(line.startswith("val loss ") and line.endswith(" (7 batches of 4x32 per process)") for line in out)


def test_damaged_hugging_face_folders_get_one_line_errors(tmp_path, capsys):
    """-e, --model and export's source: each damage named with its file, before transformers sees it."""
    cfg, model = trained_like_state()
    convert.write_hf(str(tmp_path / "good"), cfg, model.state_dict())
    capsys.readouterr()  # transformers' progress bar

    def damaged(name, damage):
        folder = tmp_path / name
        shutil.copytree(tmp_path / "good", folder)
        damage(folder)
        return folder

    def edit_config(folder, **changes):
        config = json.loads((folder / "config.json").read_text())
        config.update(changes)
        (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    no_layers = damaged("no_layers", lambda f: edit_config(f, n_layer=None))
    no_weights = damaged("no_weights", lambda f: (f / "model.safetensors").unlink())
    truncated = damaged("truncated", lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:-1000]))
    wider = damaged("wider", lambda f: edit_config(f, n_embd=128))
    expected = {
        no_layers: f"{no_layers / 'config.json'}: expected positive integers n_layer, n_head, n_embd, n_positions, vocab_size; no n_layer",
        no_weights: f"{no_weights}: no model.safetensors (nor pytorch_model.bin) beside its config.json",
        truncated: f"{truncated / 'model.safetensors'}: not a readable safetensors file (Error while deserializing header: "
                   "incomplete metadata, file not fully covered)",
        wider: f"{wider / 'model.safetensors'}: transformer.wte.weight has shape [50257, 64], but config.json (n_layer 2, "
               "n_embd 128, n_positions 1024, vocab_size 50257) means [50257, 128]"}
    for folder, message in expected.items():
        assert export.main([str(folder), "--format", "llmc", "--output", str(tmp_path / "m.bin")]) == 2
        assert evaluate.main(["--model", str(folder)]) == 2
        assert capsys.readouterr().err == f"ds_train.export: error: {message}\nds_train.evaluate: error: {message}\n"
    assert not os.path.exists(tmp_path / "m.bin")
    proc = subprocess.run([sys.executable, MAIN, "--ds_config", CPU_CONFIG, "-e", str(truncated), "-t", "32", "-b", "4",
                           "-x", "1", "-s", "0"], cwd=REPO, env=child_env(), capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr == f"ds_train: error: {expected[truncated]}\n"


def test_export_replaces_an_earlier_export_only_with_overwrite(tmp_path, capsys):
    cfg, model = trained_like_state()
    source = tmp_path / "m.bin"
    convert.write_llmc(str(source), cfg, model.state_dict())
    (tmp_path / "keep.bin").write_bytes(b"earlier work")

    def export_error(argv) -> str:
        assert export.main([*map(str, argv)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("ds_train.export: error: "), err
        return err.strip()[len("ds_train.export: error: "):]
    assert export_error([source, "--format", "llmc", "--output", tmp_path / "keep.bin"]) == \
        f"--output {tmp_path / 'keep.bin'}: already exists; add --overwrite to replace it, or choose another --output"
    assert (tmp_path / "keep.bin").read_bytes() == b"earlier work"
    assert export.main([str(source), "--format", "llmc-bf16", "--output", str(tmp_path / "keep.bin"), "--overwrite"]) == 0
    assert capsys.readouterr().out.startswith(f"replaced {tmp_path / 'keep.bin'} (llmc-bf16: 2 layers")
    assert convert.read_llmc_config(str(tmp_path / "keep.bin")) == (cfg, torch.bfloat16)

    # a Hugging Face folder: refused, then replaced whole (no file of the old one stays beside the new one)
    hf = tmp_path / "hf"
    assert export.main([str(source), "--format", "hf", "--output", str(hf)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {hf} (hf: ")
    (hf / "pytorch_model.bin").write_bytes(b"an older model")
    assert export_error([source, "--format", "hf", "--output", hf]) == \
        f"--output {hf}: already holds a Hugging Face model; add --overwrite to replace that folder, or choose another --output"
    assert export.main([str(source), "--format", "hf", "--output", str(hf), "--overwrite"]) == 0
    assert capsys.readouterr().out.startswith(f"replaced {hf} (hf: ")
    assert export.main([str(source), "--format", "hf", "--output", str(tmp_path / "fresh")]) == 0
    assert sorted(os.listdir(hf)) == sorted(os.listdir(tmp_path / "fresh")) and not os.path.exists(f"{hf}.tmp")
    capsys.readouterr()
    # a folder of other files is never replaced, --overwrite or not
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    assert export_error([source, "--format", "hf", "--output", tmp_path / "notes", "--overwrite"]) == \
        f"--output {tmp_path / 'notes'}: a folder of other files (no config.json); the hf format writes a new or empty folder"
    assert os.listdir(tmp_path / "notes") == ["todo.txt"]


def test_export_to_a_place_that_cannot_be_written_is_one_line(tmp_path, capsys):
    """As root, os.access says /sys can be written; the write itself then fails, and says so in one line."""
    cfg, model = trained_like_state()
    convert.write_llmc(str(tmp_path / "m.bin"), cfg, model.state_dict())
    for fmt, output in (("llmc", "/sys/x.bin"), ("hf", "/sys/x_hf")):
        assert export.main([str(tmp_path / "m.bin"), "--format", fmt, "--output", output]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("ds_train.export: error: ") and output in err, err
        assert not os.path.exists(output) and not os.path.exists(output + ".tmp")
