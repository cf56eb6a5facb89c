"""Bad input from the command line: one line on stderr naming the flag or file, exit status 2, no traceback."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import (BIN, CPU_CONFIG, MAIN, REPO, TINY, TRAIN_SHARD, VAL_SHARD, child_env, free_port, run_process,
                      settings_table, train)
from ds_train import build_locks, convert
from ds_train.data import read_shard, write_shard
from ds_train.hellaswag import Example, render
from ds_train.main import main
from ds_train.model import GPT, GPTConfig


def run_main(*args, launcher=None, extra_env=None):
    cmd = [sys.executable, MAIN, *map(str, args)]
    if launcher == "deepspeed":
        cmd = [os.path.join(BIN, "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), *cmd[1:]]
    return run_process(cmd, env=dict(child_env(), **(extra_env or {})), timeout=300)


def test_help_lists_llmc_flags_with_long_names():
    proc = run_main("--help")
    assert proc.returncode == 0
    for text in ("-i GLOB, --train_data GLOB", "-h 0|1, --hellaswag 0|1", "-nk K, --checkpoints_keep K", "--ds_config"):
        assert text in proc.stdout


def test_a_run_without_ds_config_trains_with_the_small_run_json():
    """llm.c's habit: `./train_gpt2cu` runs without flags; so does ds_train/main.py, without --ds_config too."""
    proc = run_main(*TINY, "-b", 4, "-x", 1, "-v", 0, "-m", 1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    settings = settings_table(proc.stdout)
    assert settings["DeepSpeed config"] == os.path.join(REPO, "ds_configs", "quickstart.json")
    assert (settings["zero_stage"], settings["precision"]) == ("1", "fp32") and "step    1/1 |" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--ds_config", "nowhere.json"], "ds_train: error: --ds_config nowhere.json: no such file"),
    (["--ds_config", CPU_CONFIG, *TINY, "-i", "nothing/*.bin"], "ds_train: error: -i nothing/*.bin: no file matches this pattern"),
    (["--ds_config", CPU_CONFIG, "-sg", "-1"], "ds_train: error: -sg -1.0: expected 0 (off) or a positive z-score"),
])
def test_bad_input_in_a_real_process(args, message):
    proc = run_main(*args)
    assert proc.returncode == 2
    assert proc.stderr.strip() == message  # exactly one line, no traceback
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("accelerator, message", [
    ("xpu", "ds_train: error: DS_ACCELERATOR=xpu: ds_train runs on cuda or cpu; set one of them, or unset it to take "
            "the GPU where torch sees one"),
    pytest.param("cuda", "ds_train: error: DS_ACCELERATOR=cuda: torch sees no CUDA GPU here; unset it, or set cpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees a GPU here")),
])
def test_an_accelerator_ds_train_cannot_run_on_is_named(accelerator, message):
    """DeepSpeed's DS_ACCELERATOR, which ds_train honours for cpu (tests/test_training.py), must name a device that
    ds_train can train on; otherwise DeepSpeed fails deep inside its imports or torch's process groups."""
    proc = run_main("--ds_config", CPU_CONFIG, *TINY, "-x", 1, extra_env={"DS_ACCELERATOR": accelerator})
    assert proc.returncode == 2
    assert proc.stderr.strip() == message
    assert "Traceback" not in proc.stdout + proc.stderr


def test_bad_input_under_the_deepspeed_launcher_fails_the_job():
    proc = run_main("--ds_config", CPU_CONFIG, *TINY, "-b", 4, "-d", 1000, launcher="deepspeed")
    assert proc.returncode != 0
    assert "ds_train: error: -d 1000: the total batch must be a positive multiple of B*T*world = 4*32*2 = 256" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_torchs_warning_of_no_cuda_runtime_is_left_out_and_its_other_warnings_are_not():
    """A CUDA build of torch with the CUDA toolkit but no GPU it can see (a CPU run on a GPU machine) warns of it
    as torch.utils.cpp_extension is imported, before any one-line error: ds_train's processes leave that line out
    (their settings table says the device), and that logger's other warnings still show."""
    code = ("import logging, ds_train, torch; log = logging.getLogger('torch.utils.cpp_extension'); "
            "log.warning(\"No CUDA runtime is found, using CUDA_HOME='/usr/local/cuda'\"); "
            "log.warning('another warning')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "No CUDA runtime" not in proc.stderr and "another warning" in proc.stderr, proc.stderr


def test_deepspeeds_warning_that_it_found_no_gpu_is_left_out_and_its_other_warnings_are_not():
    """DeepSpeed, imported where torch sees no GPU and DS_ACCELERATOR is unset (a CPU machine: the quickstart), warns
    that it chose the CPU and could not detect a GPU; after ds_train is imported that line is left out, and DeepSpeed's
    logger still shows its other warnings. Without ds_train, the same import prints it (so the test can tell)."""
    env = {key: value for key, value in child_env().items() if key != "DS_ACCELERATOR"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    outputs = []
    for first in ("ds_train", "os"):
        code = f"import {first}, deepspeed; deepspeed.utils.logger.warning('another warning')"
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout + proc.stderr)
    with_ds_train, without = outputs
    assert "Setting accelerator to CPU" not in with_ds_train and "another warning" in with_ds_train, with_ds_train
    assert "Setting accelerator to CPU. If you have GPU" in without, without


def test_a_build_lock_left_by_a_killed_build_is_named_not_waited_on(tmp_path):
    """An hour-old lock file: where the file is the lock (torch <= 2.13) torch would wait on it for ever, so the run
    stops at once naming it; where an flock is (torch >= 2.14), finished builds leave such files and the run
    trains (building DeepSpeed's CPU op in the fresh extensions root)."""
    lock = tmp_path / "py311_cpu" / "fused_adam" / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    an_hour_ago = time.time() - 3600
    os.utime(lock, (an_hour_ago, an_hour_ago))
    proc = run_main("--ds_config", CPU_CONFIG, *TINY, "-x", 1, extra_env={"TORCH_EXTENSIONS_DIR": str(tmp_path)})
    if not build_locks.torch_waits_on_lock_files():
        assert proc.returncode == 0 and str(lock) not in proc.stdout + proc.stderr, proc.stderr[-3000:]
        return
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"ds_train: error: {lock}: a JIT build's lock left 60 minutes ago by a build that "
                                   "did not finish (or by torch 2.14 or newer, whose builds leave it), which this "
                                   "torch would wait on for ever; delete it (when no other build is running) and run "
                                   "again")


def errors_of(capsys, *args) -> str:
    assert main(["--ds_config", CPU_CONFIG, *TINY, *map(str, args)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ds_train: error: ")
    return err.strip()[len("ds_train: error: "):]


def test_bad_shards(tmp_path, capsys):
    bad = tmp_path / "bad.bin"
    write_shard(str(bad), np.arange(100))
    data = bytearray(bad.read_bytes())
    data[0:4] = np.int32(1234).tobytes()
    bad.write_bytes(bytes(data))
    assert errors_of(capsys, "-i", bad) == f"{bad}: bad magic 1234, expected 20240520 (not an llm.c token shard)"
    short = tmp_path / "short.bin"
    write_shard(str(short), np.arange(100))
    assert errors_of(capsys, "-j", short, "-b", 4).startswith(f"{short}: 100 tokens is shorter than one sample")
    truncated = tmp_path / "truncated.bin"
    write_shard(str(truncated), np.arange(5000))
    truncated.write_bytes(truncated.read_bytes()[:-2])
    assert "header says 5000 tokens" in errors_of(capsys, "-i", truncated)


def test_bad_flag_combinations(tmp_path, capsys):
    assert errors_of(capsys, "-b", 4, "-t", 2048) == "-t 2048: the sequence length must be between 1 and the model's 1024 (-e gpt2:d2:c64:h2)"
    assert errors_of(capsys, "-b", 4096, "-t", 32, "-i", VAL_SHARD).endswith("use a smaller -b/-t or a longer shard")
    assert errors_of(capsys, "-b", 4, "-y", 1) == "-y 1: resuming needs -o, the run directory to resume"
    assert errors_of(capsys, "-b", 4, "-x", -1, "-d", 65536, "-i", VAL_SHARD, "-j", VAL_SHARD) == (
        f"-i {VAL_SHARD}: 32768 tokens is less than one step of 65536 tokens (-d); give -x or more data")
    afile = tmp_path / "a_file"
    afile.write_text("")
    assert errors_of(capsys, "-b", 4, "-x", 1, "-o", afile) == f"-o {afile}: is a file, expected a directory"
    assert errors_of(capsys, "-b", 4, "-x", 1, "-o", afile / "sub").startswith(f"-o {afile / 'sub'}: cannot write there")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("")  # found before the first step, not at the first save
    assert errors_of(capsys, "-b", 4, "-x", 2, "-n", 1, "-o", tmp_path / "run") == \
        f"-o {tmp_path / 'run' / 'checkpoints'}: is a file, expected a directory (where -n's checkpoints go)"
    assert errors_of(capsys, "--bogus") == "unrecognized arguments: --bogus (see --help)"


@pytest.mark.parametrize("flag", ["-i", "-j"])
def test_token_ids_outside_the_vocabulary_are_named_not_a_torch_traceback(tmp_path, flag):
    """A valid shard whose ids are beyond GPT-2's 50257 (another tokenizer's): refused at the first batch cut from
    it (train step or val loss), naming the shard and the id's index in it."""
    oov = tmp_path / "oov.bin"
    write_shard(str(oov), np.full(5000, 60000))
    proc = run_main("--ds_config", CPU_CONFIG, *TINY, "-b", 4, "-x", 1, "-m", 1, flag, oov)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(f"ds_train: error: {oov}: the token at index ")
    assert proc.stderr.strip().endswith(" is 60000, expected ids below the model's vocab_size 50257 (a shard tokenized "
                                        "for another vocabulary, or corrupt)")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stdout + proc.stderr


def test_a_bad_val_id_is_refused_before_training_even_at_v0(tmp_path):
    """-v 0 reads the val split only after the last step; its ids are checked before the first, so no training
    (nor its last checkpoint) is lost to them."""
    val = tmp_path / "val.bin"
    tokens = np.asarray(read_shard(VAL_SHARD)).copy()
    tokens[10] = 60000
    write_shard(str(val), tokens)
    proc = run_main("--ds_config", CPU_CONFIG, *TINY, "-b", 4, "-x", 3, "-v", 0, "-n", 2, "-o", tmp_path / "out", "-j", val)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"ds_train: error: {val}: the token at index 10 is 60000, expected ids below the "
                                   "model's vocab_size 50257 (a shard tokenized for another vocabulary, or corrupt)")
    assert "step    1/3" not in proc.stdout and not (tmp_path / "out" / "checkpoints").exists()


def test_hellaswag_examples_longer_than_the_model_context(tmp_path, capsys):
    cfg = GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=16)
    model = tmp_path / "ctx16.bin"
    convert.write_llmc(str(model), cfg, GPT(cfg).state_dict())
    example = Example("a " * 20, ("one.", "two.", "three.", "four."), 0)
    longest = len(render(example).ctx_tokens) + max(map(len, render(example).ending_tokens))
    hs = tmp_path / "hs.jsonl"
    hs.write_text(json.dumps({"ctx": example.ctx, "endings": list(example.endings), "label": 0}) + "\n")
    assert errors_of(capsys, "-e", model, "-t", 16, "-b", 4, "-h", 1, "--hellaswag_data", hs) == (
        f"{hs}:1: context and ending are {longest} tokens, more than the 17 that the model (-e {model}) can score "
        "with its context of 16 tokens")


def test_val_batches_beyond_the_split_are_capped_with_a_note(tmp_path):
    """-m larger than the val split reads the split once (as llm.c's loaders capped it), not its batches again."""
    val = tmp_path / "val.bin"
    write_shard(str(val), np.asarray(read_shard(VAL_SHARD))[:1000])
    run = train([*TINY, "-b", 4, "-x", 1, "-m", 100, "-j", val]).check()
    settings = settings_table(run.stdout)
    assert (settings["val_max_steps"], settings["val_num_batches"]) == ("100", "7")  # (1000 - 1) // (4*32)
    assert (f"note: -m 100: the val split (-j {val}) holds 7 batches of B*T*world = 128 tokens; the val loss "
            "reads those 7") in run.stdout.splitlines()


def test_dry_run_ranks_are_checked_first(capsys):
    assert errors_of(capsys, "-b", 4, "--dry_run", -1) == "--dry_run -1: expected a positive number of ranks to plan for"


def test_dry_run_says_why_an_epoch_of_the_data_has_no_step(capsys):
    assert main(["--ds_config", CPU_CONFIG, "--dry_run", "8", "-b", "64", "-t", "1024"]) == 0
    out = capsys.readouterr().out
    assert (f"note: -i {TRAIN_SHARD}: 305260 tokens is less than one step of 524288 tokens (-d) at 8 ranks; give -x or "
            "more data") in out
    assert "dry run | ranks 8 | steps ? |" in out


def test_dry_run_notes_an_output_dir_the_run_could_not_write(tmp_path, capsys):
    """Found without creating anything: a dry run writes nothing, and may plan for another machine (a note)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = blocker / "run"
    assert main(["--ds_config", CPU_CONFIG, "--dry_run", "2", *TINY, "-b", "4", "-o", str(out)]) == 0
    assert (f"note: -o {out}: {blocker} is a file, so the directory cannot be made on this machine; the run would "
            "stop there") in capsys.readouterr().out
    assert main(["--ds_config", CPU_CONFIG, "--dry_run", "2", *TINY, "-b", "4", "-o", str(tmp_path / "new" / "run")]) == 0
    assert "note: -o" not in capsys.readouterr().out and not os.path.exists(tmp_path / "new")


def test_a_setting_deepspeed_refuses_is_one_line_too(tmp_path):
    """A section ds_train does not read, which DeepSpeed's own config check refuses inside deepspeed.initialize."""
    ds_config = tmp_path / "ds.json"
    ds_config.write_text(json.dumps({"zero_optimization": {"stage": 1}, "checkpoint": {"tag_validation": "sometimes"}}))
    proc = run_main("--ds_config", ds_config, *TINY, "-b", 4, "-x", 1)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(f"ds_train: error: --ds_config {ds_config}: Checkpoint config contains "
                                          "invalid tag_validation value of SOMETIMES")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stdout + proc.stderr


def test_a_model_too_big_for_the_host_is_one_line_that_sizes_it():
    """A model whose fp32 weights the machine cannot hold: the allocation the kernel refuses (at once, for more than
    the machine has; here under a 12 GiB `ulimit -v`, so that it fails the same way on any machine) ends the run
    with one line naming the model, the allocation and its weights' size, not the CPU allocator's traceback. The
    refused allocation is the token embedding, 50304 x 65536 fp32 values (12.28 GiB); the model, 12 C^2 a layer
    and V C for the embedding, is 54.9B parameters, 204.53 GiB of fp32."""
    cmd = ["bash", "-c", 'ulimit -v $((12 * 2**20)) && exec "$@"', "bash", sys.executable, MAIN, "--ds_config",
           CPU_CONFIG, "-e", "gpt2:d1:c65536:h1", "-t", "32", "-b", "4", "-x", "1", "-s", "0", "-h", "0"]
    proc = run_process(cmd, env=child_env(), timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "ds_train: error: out of host memory while building the model and its DeepSpeed engine: 12.28 GiB more could "
        "not be allocated (-e gpt2:d1:c65536:h1, 54904M parameters, -b 4 -t 32 -r 0, ZeRO-1 over 1 rank); try a "
        "smaller model, or a machine with more memory than its 204.53 GiB of fp32 weights and what its optimizer "
        "keeps here")
    assert "Traceback" not in proc.stdout + proc.stderr
