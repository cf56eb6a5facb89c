"""Checkpoints and resume, for real: 2 ranks under the deepspeed launcher, killed with SIGKILL or stopped with
SIGTERM at chosen moments, then resumed with -y 1. The train split is shuffled, so the data loader's position
and RNG must come back exactly for the losses to match; on the CPU in fp32 they match bit for bit.
"""

import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from conftest import (BIN, CPU_CONFIG, MAIN, REPO, TINY, VAL_SHARD, cached_train, child_env, cmdline, descendants,
                      five_hellaswag_examples, free_port, parse, start_ranks, train, wait_all, wait_for, with_sigint)
from ds_train import checkpoint

STEPS = 8
# shuffled data, warmup then decay, val every 4 steps; checkpoints every 2 steps
RESUMABLE = [*TINY, "-x", STEPS, "-v", 4, "-m", 2, "-l", "2e-3", "-u", 2, "-q", 0.1, "-d", 256, "-b", 4, "-z", 1,
             "--shuffle", 1, "-n", 2]


def reference():
    """The uninterrupted run; -nk 1 -nm 3 leave the newest checkpoint (8) and the multiples of 3 (6)."""
    return cached_train("resume_reference", [*RESUMABLE, "-nk", 1, "-nm", 3], ranks=2, launcher="env")


def main_log(run_dir) -> str:
    with open(os.path.join(run_dir, "main.log")) as f:
        return f.read()


def launch(out_dir, *extra):
    """Start a 2-rank run in its own process group, with SIGINT as a terminal leaves it; its output goes to a file
    so it can be watched."""
    log = open(os.path.join(os.path.dirname(out_dir), f"{os.path.basename(out_dir)}.{time.time_ns()}.out"), "w+")
    cmd = [os.path.join(BIN, "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), MAIN,
           "--ds_config", CPU_CONFIG, *map(str, [*RESUMABLE, "-o", out_dir, *extra])]
    proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(threads=1), stdout=log, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, preexec_fn=with_sigint(signal.SIG_DFL))
    return proc, log


def start_two_ranks(out_dir, *extra):
    """The run's two ranks started directly (forked from the zygote), as torchrun or srun start them: for a stop
    whose launcher is not what is tested, without the launcher's seconds. -> (the ranks, rank 0's stdout file)."""
    cmd = [sys.executable, MAIN, "--ds_config", CPU_CONFIG, *map(str, [*RESUMABLE, "-o", out_dir, *extra])]
    ranks, outputs = start_ranks(cmd, 2, child_env())
    return ranks, outputs[0][0]


def resume(out_dir, *extra):
    """-y 1 on the run in out_dir, its two ranks started directly, as the reference's were. After a stop under the
    launcher what is left to check is the checkpoint it left, and ranks forked from the zygote spare the launcher's
    process and each rank's imports (the kill -9 test's second and third legs resume under the launcher)."""
    return train([*RESUMABLE, "-o", out_dir, "-y", 1, *extra], ranks=2, launcher="env")


def finish(proc, log, timeout=300):
    proc.wait(timeout=timeout)
    log.seek(0)
    return parse(subprocess.CompletedProcess([], proc.returncode, log.read(), ""))


def checkpoints_in(run_dir):
    done = sorted(int(name[5:]) for name in os.listdir(run_dir) if re.fullmatch(r"DONE_\d{8}", name))
    folders = sorted(int(name[5:]) for name in os.listdir(os.path.join(run_dir, "checkpoints")) if name.startswith("step_"))
    return done, folders


def pending_evaluations(run_dir):
    """The steps whose checkpoint carries an EVAL_PENDING marker: a stop cut their evaluation short."""
    return sorted(int(m.group(1)) for name in os.listdir(run_dir) if (m := re.fullmatch(r"EVAL_PENDING_(\d{8})", name)))


def test_retention_keeps_the_last_k_and_multiples_of_m():
    done, folders = checkpoints_in(reference().output_dir)
    assert done == folders == [6, 8]


def test_kill_9_at_random_moments_then_resume_is_exact(tmp_path):
    """SIGKILL to every process of the run, in a step or in a save, three times; -y 1 after each."""
    ref = reference()
    out = str(tmp_path / "run")
    delays = random.Random(5).sample([0.0, 0.05, 0.1, 0.2, 0.3, 0.4], 3)
    # the last kill comes early enough (step 5, plus at most 0.4 s) that the final run always has steps to train
    for trigger, delay in zip(["step    2/8", "saved checkpoint", "step    5/8"], delays):
        proc, log = launch(out, "-y", 1)
        wait_for(log, trigger, proc)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    last = resume(out).check()
    assert main_log(out) == main_log(ref.output_dir)  # every step once, the same numbers
    resumed_steps = len(last.losses)
    assert last.losses == ref.losses[STEPS - resumed_steps:]  # bit for bit
    assert last.val_losses[-1] == ref.val_losses[-1]


def test_sigterm_to_one_rank_saves_at_the_step_boundary_and_exits_0(tmp_path):
    """As SLURM's time limit or a preemption delivers it; the rank that got no signal stops with the other."""
    ref = reference()
    out = str(tmp_path / "run")
    proc, log = launch(out, "-y", 1, "-n", 0)  # no periodic checkpoints: the one on disk is the signal's
    wait_for(log, r"^step    3/8", proc)
    rank1 = next(p for p in descendants(proc) if "--local_rank=1" in cmdline(p))
    rank1.send_signal(signal.SIGTERM)
    stopped = finish(proc, log)
    assert stopped.returncode == 0, stopped.stdout[-3000:]
    m = re.search(r"stopping at step (\d+) on a signal to another rank: checkpoint saved", stopped.stdout)
    assert m, stopped.stdout[-3000:]
    step = int(m.group(1))
    assert checkpoints_in(out) == ([step], [step])
    resumed = resume(out, "-n", 0).check()
    assert f"resumed from {out}/checkpoints/step_{step:08d} at step {step}" in resumed.stdout
    assert stopped.losses + resumed.losses == ref.losses
    assert main_log(out) == main_log(ref.output_dir)


def test_sigterm_mid_hellaswag_cuts_it_short_and_the_resumed_run_evaluates_that_step_again(tmp_path):
    """A preemption's grace time (the deepspeed launcher kills ranks 30 s after passing SIGTERM on; SLURM's KillWait
    is 30 s by default) can be shorter than a big model's HellaSwag. SIGTERM to rank 1 (the ranks started as srun or
    torchrun start them) while both score the shipped 10,042 examples (thousands of forwards here) stops both at
    the next forward, with a checkpoint marked EVAL_PENDING; the resumed run evaluates step 4 again (here on 5
    examples) and removes the marker, and main.log holds each evaluation once. Without the check the ranks would finish
    HellaSwag first and print its score."""
    ref = reference()
    out = str(tmp_path / "run")
    ranks, log = start_two_ranks(out, "-n", 0, "-h", 1)  # -v 4: the val loss, then HellaSwag, at step 4
    wait_for(log, r"^step    4/8[\s\S]*^val loss", ranks[0])
    os.kill(ranks[1].pid, signal.SIGTERM)
    wait_all(ranks, 300)
    log.seek(0)
    stopped = parse(subprocess.CompletedProcess([], ranks[0].returncode, log.read(), ""))
    assert [rank.returncode for rank in ranks] == [0, 0], stopped.stdout[-3000:]
    assert "HellaSwag at step 4 cut short on a signal to another rank: a run resumed from step 4 evaluates it " \
           "again" in stopped.stdout and "HellaSwag: " not in stopped.stdout, stopped.stdout[-3000:]
    assert f"stopping at step 4 on a signal to another rank: checkpoint saved; resume with -y 1 -o {out}" \
           in stopped.stdout
    assert checkpoints_in(out) == ([4], [4]) and pending_evaluations(out) == [4]
    resumed = resume(out, "-n", 0, "-h", 1, "--hellaswag_data", five_hellaswag_examples(tmp_path)).check()
    assert "evaluating step 4 again: a stop signal cut its evaluation short" in resumed.stdout
    assert pending_evaluations(out) == []
    assert resumed.stdout.count("HellaSwag: ") == 2 and "/5 = " in resumed.stdout  # steps 4 and 8
    assert stopped.losses + resumed.losses == ref.losses  # an evaluation draws on no training state
    assert [line.split()[0] for line in main_log(out).splitlines() if "trl:" not in line] == [
        "s:0", "s:4", "s:4", "s:8", "s:8"]  # the val loss at 0, 4 and 8, HellaSwag at 4 and 8, each once


def test_a_stop_during_the_last_steps_evaluation_saves_the_final_checkpoint_and_y1_evaluates_it(tmp_path):
    """At the last step the evaluation comes before the loop's end: cut short there, the run still saves (the final
    checkpoint, marked EVAL_PENDING), and -y 1 on the finished run trains nothing, evaluates and removes the marker."""
    out = str(tmp_path / "run")
    ranks, log = start_two_ranks(out, "-x", 4, "-n", 0, "-h", 1)
    wait_for(log, r"^step    4/4[\s\S]*^val loss", ranks[0])
    os.kill(ranks[1].pid, signal.SIGTERM)
    wait_all(ranks, 300)
    log.seek(0)
    stopped = log.read()
    assert [rank.returncode for rank in ranks] == [0, 0], stopped[-3000:]
    assert "HellaSwag at step 4 cut short on a signal to another rank" in stopped and "HellaSwag: " not in stopped
    assert checkpoints_in(out) == ([4], [4]) and pending_evaluations(out) == [4]
    again = resume(out, "-x", 4, "-n", 0, "-h", 1, "--hellaswag_data", five_hellaswag_examples(tmp_path)).check()
    assert "step 4 is the last step (-x 4): nothing left to train" in again.stdout and not again.losses
    assert "evaluating step 4 again" in again.stdout and again.stdout.count("HellaSwag: ") == 1
    assert pending_evaluations(out) == []
    assert [line.split()[0] for line in main_log(out).splitlines() if "trl:" not in line] == ["s:0", "s:4", "s:4"]


def test_ctrl_c_under_the_launcher_saves_at_the_step_boundary(tmp_path):
    """A terminal's Ctrl-C: SIGINT to the deepspeed launcher and both ranks at once (one process group). The ranks
    stop together at the next step boundary with a checkpoint, rank 0 says so on the first Ctrl-C, and the run
    resumes from it; they used to die of KeyboardInterrupt, losing the steps since the last checkpoint."""
    out = str(tmp_path / "run")
    proc, log = launch(out, "-n", 0)
    wait_for(log, r"^step    3/8", proc)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)
    for _ in range(600):  # the launcher may leave before its ranks have saved
        if not any(p.info["cmdline"] and out in p.info["cmdline"] for p in psutil.process_iter(["cmdline"])):
            break
        time.sleep(0.1)
    log.seek(0)
    text = log.read()
    m = re.search(r"^stopping at step (\d+) on SIGINT: checkpoint saved; resume with -y 1", text, re.M)
    assert m, text[-3000:]
    step = int(m.group(1))
    assert text.count("Ctrl-C: stopping at the next step boundary") == 1, text[-3000:]  # rank 0's
    assert checkpoints_in(out) == ([step], [step])
    assert not re.search(r'File ".*ds_train/', text), text[-3000:]  # no rank's traceback (the launcher's is its own)
    resumed = resume(out, "-n", 0).check()
    assert f"resumed from {out}/checkpoints/step_{step:08d} at step {step}" in resumed.stdout
    assert main_log(out) == main_log(reference().output_dir)


SLOW_STEPS = ["-e", "gpt2:d4:c256:h4", "-t", 256, "-b", 8, "-x", 20, "-v", 1000, "-s", 0, "-n", 0]  # ~1 s a CPU step


def test_a_second_ctrl_c_quits_at_once_in_one_line(tmp_path):
    """Ctrl-C twice within a step: the second ends the run there, with one line and 130, saving nothing."""
    out = str(tmp_path / "run")
    log, err = open(tmp_path / "run.out", "w+"), open(tmp_path / "run.err", "w+")
    cmd = [sys.executable, MAIN, "--ds_config", CPU_CONFIG, *map(str, [*SLOW_STEPS, "-o", out])]
    proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(threads=2), stdout=log, stderr=err, text=True,
                            preexec_fn=with_sigint(signal.SIG_DFL))
    wait_for(log, r"^step    1/20", proc)
    time.sleep(0.5)  # past the boundary that follows the step's line (a few ms), into the second step (about 1 s)
    proc.send_signal(signal.SIGINT)
    wait_for(err, r"^Ctrl-C: stopping at the next step boundary", proc, timeout=30)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 128 + signal.SIGINT
    err.seek(0)
    lines = err.read().strip().splitlines()
    assert lines[-1] == "ds_train: quit on a second Ctrl-C: the steps since the last checkpoint are not saved", lines[-5:]
    assert not any(line.startswith("Traceback") for line in lines)
    assert not os.path.exists(os.path.join(out, "checkpoints")) or checkpoints_in(out) == ([], [])


def test_a_run_started_with_sigint_ignored_keeps_ignoring_it(tmp_path):
    """A shell's background job starts with SIGINT ignored, so that a Ctrl-C meant for the foreground leaves it
    alone; ds_train keeps it so."""
    out = str(tmp_path / "run")
    log = open(tmp_path / "run.out", "w+")
    cmd = [sys.executable, MAIN, "--ds_config", CPU_CONFIG, *map(str, [*TINY, "-x", 6, "-b", 4, "-o", out, "-n", 0])]
    proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(threads=2), stdout=log, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=with_sigint(signal.SIG_IGN))
    wait_for(log, r"^step    2/6", proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 0
    log.seek(0)
    text = log.read()
    assert "step    6/6" in text and "SIGINT" not in text and "Ctrl-C" not in text, text[-3000:]


def test_a_save_that_cannot_write_is_one_line_naming_the_step_to_resume_from(tmp_path):
    """Files capped at 2 MB (RLIMIT_FSIZE, which stops a write as a full disk or a quota does) from the resumed run
    on: its save of step 4 fails in torch's zip writer, and the run ends with one line naming the incomplete folder
    and the step -y 1 resumes from (2), where torch's `unexpected pos` traceback was."""
    out = str(tmp_path / "run")
    flags = [*TINY, "-b", 4, "-n", 2, "-v", 100, "-o", out]
    train([*flags, "-x", 2]).check()
    cmd = [sys.executable, MAIN, "--ds_config", CPU_CONFIG, *map(str, [*flags, "-x", 6, "-y", 1])]
    capped = subprocess.run(cmd, cwd=REPO, env=child_env(threads=2), capture_output=True, text=True, timeout=300,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20)))
    assert capped.returncode == 2, capped.stderr[-3000:]
    assert re.fullmatch(
        rf"ds_train: error: -o {re.escape(out)}: cannot save the checkpoint of step 4: a write came up short \(is the "
        rf"disk full, or a quota reached\?\); \d+ MiB free there\. Its folder {re.escape(out)}/checkpoints/step_00000004 "
        r"is incomplete \(no DONE marker\) and can be deleted; -y 1 resumes from step 2",
        capped.stderr.strip().splitlines()[-1]), capped.stderr[-3000:]
    assert "Traceback" not in capped.stderr
    assert checkpoint.done_steps(out) == [2]


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, damage):
    """A file of the newest checkpoint cut short, or with one byte changed (same size: only the checksum can
    tell); resumed on 2 ranks, each of which checks half of the checksums."""
    ref = reference()
    out = str(tmp_path / "run")
    shutil.copytree(ref.output_dir, out)
    optimizer_file = os.path.join(out, "checkpoints", "step_00000008", "zero_pp_rank_1_mp_rank_00_optim_states.pt")
    size = os.path.getsize(optimizer_file)
    with open(optimizer_file, "r+b") as f:
        if damage == "truncated":
            f.truncate(size // 2)
        else:
            f.seek(size // 2)
            byte = f.read(1)
            f.seek(size // 2)
            f.write(bytes([byte[0] ^ 0x10]))
    os.makedirs(os.path.join(out, "checkpoints", "step_00000010"))  # a save killed before its DONE marker
    run = train([*RESUMABLE, "-nk", 1, "-nm", 3, "-o", out, "-y", 1], ranks=2, launcher="env").check()
    problem = {"truncated": f"{optimizer_file} has {size // 2} bytes, {size} when saved",
               "flipped": f"{optimizer_file} does not match its sha256 from the save (corrupted)"}[damage]
    assert f"warning: checkpoint step 8 is damaged ({problem}); falling back to the one before it" in run.stdout
    assert f"resumed from {out}/checkpoints/step_00000006 at step 6" in run.stdout
    assert run.losses == ref.losses[6:]
    assert main_log(out) == main_log(ref.output_dir)


@pytest.mark.parametrize("marker,damage", [
    ("{}", None), ("[1]", None), ('{"step": 8, "files": {}}', None),  # JSON that ds_train does not write
    ("", "truncated"), ("", "no rank state"),  # llm.c's empty marker: only the files themselves can tell
])
def test_a_marker_that_cannot_vouch_for_its_checkpoint_counts_as_damaged(tmp_path, marker, damage):
    from ds_train import checkpoint

    out = str(tmp_path / "run")
    shutil.copytree(reference().output_dir, out)
    where = os.path.join(out, "checkpoints", "step_00000008")
    with open(os.path.join(out, "DONE_00000008"), "w") as f:
        f.write(marker)
    if damage == "truncated":
        os.truncate(os.path.join(where, "mp_rank_00_model_states.pt"), 100)
    elif damage == "no rank state":
        os.remove(os.path.join(where, "ds_train_rank_00000.pt"))
    warnings = []
    assert checkpoint.newest_whole(out, say=warnings.append) == 6
    problem = {None: f"{out}/DONE_00000008 is unreadable: not the JSON that ds_train writes there",
               "truncated": f"{where}/mp_rank_00_model_states.pt is not a whole torch file (truncated or corrupted)",
               "no rank state": f"{where}/ds_train_rank_00000.pt is missing"}[damage]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: checkpoint step 8 is damaged ({problem}")
    assert warnings[0].endswith("; falling back to the one before it")


def test_an_empty_marker_over_a_truncated_file_falls_back_and_a_finished_run_says_so(tmp_path):
    """llm.c's empty DONE marker over a cut-short model file: -y 1 falls back to step 6, which with -x 6 is the
    last step, so the run says there is nothing left to train and exits 0."""
    out = str(tmp_path / "run")
    shutil.copytree(reference().output_dir, out)
    with open(os.path.join(out, "DONE_00000008"), "w"):
        pass
    os.truncate(os.path.join(out, "checkpoints", "step_00000008", "mp_rank_00_model_states.pt"), 100)
    run = train([*RESUMABLE, "-o", out, "-y", 1, "-x", 6], ranks=2, launcher="env").check()
    assert "warning: checkpoint step 8 is damaged" in run.stdout
    assert f"resumed from {out}/checkpoints/step_00000006 at step 6" in run.stdout
    assert "step 6 is the last step (-x 6): nothing left to train" in run.stdout
    assert run.losses == []


def test_resume_where_no_marked_checkpoint_verifies_is_refused(tmp_path):
    """Starting from step 0 there would cut main.log back and save over the old run's step folders: refused,
    like -y 0 over checkpoints. So is llm.c's own output directory (DONE markers, no checkpoints/)."""
    ref = reference()
    out = str(tmp_path / "run")
    shutil.copytree(ref.output_dir, out)
    for step in (6, 8):
        os.truncate(os.path.join(out, "checkpoints", f"step_{step:08d}", "mp_rank_00_model_states.pt"), 100)
    run = train([*RESUMABLE, "-o", out, "-y", 1])
    assert run.returncode == 2
    assert (f"ds_train: error: -y 1: -o {out} has DONE markers (steps 6 to 8) but no checkpoint there verifies (each "
            "is missing or damaged: see the warnings above); resume from another -o, or remove its DONE_* markers and "
            "checkpoints/ to start over") in run.stderr and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert "warning: checkpoint step 6 is damaged" in run.stdout and "; no checkpoint before it" in run.stdout
    assert main_log(out) == main_log(ref.output_dir)  # nothing was lost
    assert checkpoints_in(out) == ([6, 8], [6, 8])
    llmc = tmp_path / "llmc"
    llmc.mkdir()
    (llmc / "DONE_00000005").write_text("")
    (llmc / "main.log").write_text("s:0 trl:11.0\n")
    run = train([*RESUMABLE, "-o", llmc, "-y", 1])
    assert run.returncode == 2
    assert f"ds_train: error: -y 1: -o {llmc} has DONE markers (step 5) but no checkpoint there verifies" in run.stderr
    assert sorted(os.listdir(llmc)) == ["DONE_00000005", "main.log"]
    assert (llmc / "main.log").read_text() == "s:0 trl:11.0\n"


def test_a_damaged_step_directory_given_directly_is_refused(tmp_path, capsys):
    """-e, evaluate --model and export read a step_* directory itself: it is checked against its DONE marker,
    or without one as far as its files tell."""
    from ds_train import evaluate, export

    out = copy_checkpoint(reference().output_dir, 8, str(tmp_path / "run"))
    where = os.path.join(out, "checkpoints", "step_00000008")
    model_states = os.path.join(where, "mp_rank_00_model_states.pt")
    size = os.path.getsize(model_states)
    os.truncate(model_states, 100)

    def error(module, argv) -> str:
        assert module.main([*map(str, argv)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        return err.strip().split("error: ", 1)[1]
    for with_marker, problem in ((True, f"{model_states} has 100 bytes, {size} when saved"),
                                 (False, f"{model_states} is not a whole torch file (truncated or corrupted)")):
        if not with_marker:
            os.remove(os.path.join(out, "DONE_00000008"))
        expected = (f"{where}: this checkpoint is damaged or incomplete ({problem}); use another step_* directory, "
                    "or the run directory for its newest intact checkpoint")
        assert error(evaluate, ["--model", where]) == expected
        assert error(export, [where, "--format", "llmc", "--output", tmp_path / "m.bin"]) == expected
        run = train([*RESUMABLE, "-e", where])
        assert run.returncode == 2
        assert f"ds_train: error: {expected}" in run.stderr and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert not os.path.exists(tmp_path / "m.bin")


def test_settings_that_cannot_carry_over_are_refused(tmp_path):
    ref = reference()
    out = str(tmp_path / "run")
    shutil.copytree(ref.output_dir, out)
    where = f"{out}/checkpoints/step_00000008"
    cases = [
        (["-e", "gpt2:d2:c64:h4"], f"-y 1: {where} holds a gpt2:d2:c64:h2 model"),
        (["-d", 512], f"-y 1: {where} was trained with -d 256, this run asks for -d 512; resume with -d 256, "
                      "or add --resume_new_batch 1"),
        (["-t", 16], f"-y 1: {where} was trained with -t 32, this run asks for -t 16"),
        (["-d", 384, "-b", 2, "--resume_new_batch", 1],
         "-d 384: the checkpoint's data stream moves in micro-steps of 2 ranks x 4 rows x 32 tokens; resume with a "
         "multiple of 256 tokens"),
        (["--shuffle", 0], f"-y 1: {where} was trained with --shuffle 1, this run asks for --shuffle 0; resume with "
                           "--shuffle 1 (or start a new run in another -o)"),
        (["-i", VAL_SHARD], f"-y 1: {where} was trained on tiny_shakespeare_train.bin, this run's -i {VAL_SHARD} gives "
                            "tiny_shakespeare_val.bin; resume with the same shards (or start a new run in another -o)"),
        (["-x", 4], f"-y 1: {where} is at step 8, past -x 4: there is nothing to train; resume with an -x above 8"),
    ]
    for extra, message in cases:  # refused before the engine is built; one rank is enough to see it
        run = train([*RESUMABLE, "-o", out, "-y", 1, *extra])
        assert run.returncode == 2
        assert f"ds_train: error: {message}" in run.stderr and "Traceback" not in run.stderr, run.stderr[-2000:]
    started_over = train([*RESUMABLE, "-o", out, "-y", 0])
    assert started_over.returncode == 2
    assert started_over.stderr.strip() == (f"ds_train: error: -y 0: -o {out} already holds checkpoints of a run; "
                                           "resume it with -y 1, or choose another -o (or delete them) to start over")
    assert main_log(out) == main_log(ref.output_dir)  # nothing was lost


def copy_checkpoint(run_dir, step, out):
    """A run directory that holds only checkpoint `step` of run_dir, and run_dir's main.log."""
    os.makedirs(os.path.join(out, "checkpoints"))
    shutil.copytree(os.path.join(run_dir, "checkpoints", f"step_{step:08d}"), os.path.join(out, "checkpoints", f"step_{step:08d}"))
    shutil.copy(os.path.join(run_dir, f"DONE_{step:08d}"), out)
    shutil.copy(os.path.join(run_dir, "main.log"), out)
    return out


def resume_elsewhere(run_dir, step, out, ranks, *flags):
    run = train([*RESUMABLE, "-o", copy_checkpoint(run_dir, step, out), "-y", 1, *flags], ranks=ranks,
                launcher="env" if ranks > 1 else "python").check()
    assert f"resumed from {out}/checkpoints/step_{step:08d} at step {step}" in run.stdout
    run.output_dir = out
    return run


@pytest.mark.parametrize("there,back", [
    # 1 rank at ZeRO-3 with -b 8 reads the same 8 rows per micro-step as 2 ranks x 4, so val loss compares too
    ((1, ["-z", 3, "-b", 8]), (2, ["-z", 1, "-b", 4])),
    # without ZeRO on 1 rank with accumulation 2, then ZeRO-2 with -b 2 on 2 ranks
    ((1, ["-z", 0, "-b", 4]), (2, ["-z", 2, "-b", 2])),
])
def test_resume_on_another_world_size_and_zero_stage_continues_the_same_run(tmp_path, there, back):
    """The reference (2 ranks, ZeRO-1, -b 4) from its step 6 on another layout, and from that run's step 7 on
    a third one: the weights, AdamW's moments and step, and the shuffled data order all carry over, so the
    losses are the uninterrupted run's up to float summation order."""
    ref = reference()
    ranks, flags = there
    first = resume_elsewhere(ref.output_dir, 6, str(tmp_path / "there"), ranks, *flags, "-n", 1)
    assert f"from 2 ranks at ZeRO-1 to 1 at ZeRO-{flags[1]}" in first.stdout
    assert first.losses == pytest.approx(ref.losses[6:], abs=2e-5)
    ranks, flags = back
    second = resume_elsewhere(str(tmp_path / "there"), 7, str(tmp_path / "back"), ranks, *flags)
    assert second.losses == pytest.approx(ref.losses[7:], abs=2e-5)
    if "-b" in flags and flags[flags.index("-b") + 1] == 4:
        assert first.val_losses[-1] == pytest.approx(ref.val_losses[-1], abs=2e-5)
        assert second.val_losses[-1] == pytest.approx(ref.val_losses[-1], abs=2e-5)


def test_bf16_resume_on_another_layout(tmp_path):
    """bf16 at ZeRO-1 is DeepSpeed's BF16_Optimizer, with its own partitions and file names: 2 ranks -> 1."""
    ds_config = tmp_path / "bf16.json"
    ds_config.write_text('{"bf16": {"enabled": true}}')
    flags = [*RESUMABLE, "-x", 4, "-v", 2]
    ref = train([*flags, "-o", tmp_path / "ref"], ranks=2, launcher="env", ds_config=str(ds_config)).check()
    assert "bf16 (fp32 master weights)" in ref.stdout
    out = copy_checkpoint(str(tmp_path / "ref"), 2, str(tmp_path / "one"))
    one = train([*flags, "-o", out, "-y", 1, "-b", 8], ds_config=str(ds_config)).check()
    assert "from 2 ranks at ZeRO-1 to 1 at ZeRO-1" in one.stdout
    assert one.losses[0] == pytest.approx(ref.losses[2], abs=1e-5)  # the same weights and rows
    assert one.losses == pytest.approx(ref.losses[2:], abs=1e-3)
    assert one.val_losses[-1] == pytest.approx(ref.val_losses[-1], abs=1e-3)


def test_a_new_total_batch_on_resume_is_taken_when_asked(tmp_path):
    """--resume_new_batch 1: -d 512 from the reference's step 6 (-d 256) on 2 ranks at -b 4 trains 2 stream
    micro-steps per step and saves a checkpoint that resumes as usual."""
    ref = reference()
    run = resume_elsewhere(ref.output_dir, 6, str(tmp_path / "run"), 2, "-d", 512, "--resume_new_batch", 1, "-x", 10)
    assert re.search(r"^\| grad_accum_steps +\| 2 +\|$", run.stdout, re.M), run.stdout[:3000]
    assert len(run.losses) == 4 and all(0 < loss < ref.losses[5] for loss in run.losses)
    assert checkpoints_in(run.output_dir) == ([6, 8, 10], [6, 8, 10])


def test_a_dead_rank_ends_the_job_instead_of_hanging(tmp_path):
    proc, log = launch(str(tmp_path / "run"), "-x", 1000, "-n", 0)
    wait_for(log, r"^step    2/1000", proc)
    rank1 = next(p for p in descendants(proc) if "--local_rank=1" in cmdline(p))
    killed_at = time.time()
    rank1.kill()
    run = finish(proc, log, timeout=120)
    assert run.returncode != 0
    assert time.time() - killed_at < 60


def test_prune_keeps_what_the_flags_say_and_clears_dead_saves(tmp_path):
    from ds_train import checkpoint

    for step in range(1, 11):
        folder = tmp_path / "checkpoints" / checkpoint.tag(step)
        os.makedirs(folder)
        (folder / "model_states.pt").write_bytes(b"x" * step)
        if step != 5:  # step 5's save was killed before its marker
            files = {"model_states.pt": {"bytes": step, "sha256": "not checked here"}}
            (tmp_path / (checkpoint.DONE % step)).write_text(json.dumps({"step": step, "files": files}))
    os.makedirs(tmp_path / "checkpoints" / checkpoint.tag(11))  # a save in progress
    for step in (2, 3):  # stops cut these steps' evaluations short: the markers go or stay with their checkpoints
        checkpoint.set_evaluation_pending(str(tmp_path), step, True)
    checkpoint.prune(str(tmp_path), keep_last=2, keep_every=3)
    assert checkpoints_in(tmp_path) == ([3, 6, 9, 10], [3, 6, 9, 10, 11])
    assert pending_evaluations(tmp_path) == [3]

    # step 9 truncated since its save: -nk 2 keeps it but counts the whole step 6 as the second of the two
    (tmp_path / "checkpoints" / checkpoint.tag(9) / "model_states.pt").write_bytes(b"x")
    said = []
    checkpoint.prune(str(tmp_path), keep_last=2, keep_every=0, say=said.append)
    assert checkpoints_in(tmp_path) == ([6, 9, 10], [6, 9, 10, 11])
    assert len(said) == 1 and re.fullmatch(r"warning: checkpoint step 9 is damaged \(.*model_states.pt has 1 bytes, 9 "
                                           r"when saved\); kept, but not counted among the 2 whole ones that -nk keeps",
                                           said[0])
    checkpoint.prune(str(tmp_path), keep_last=0, keep_every=0)  # -nk 0 keeps everything complete
    assert checkpoints_in(tmp_path) == ([6, 9, 10], [6, 9, 10, 11])


@pytest.mark.parametrize("evaluated", [True, False])
def test_main_log_is_cut_back_to_the_resumed_step(tmp_path, evaluated):
    """Back to what the checkpoint of step 4 had seen: step 4's val and eval lines too, unless a stop signal cut
    that step's evaluation short (the resumed run evaluates it again)."""
    from ds_train.metrics import MainLog

    log = MainLog(str(tmp_path), enabled=True)
    for step in range(6):
        if step % 2 == 0:
            log.val(step, 5.0)
            log.eval(step, 0.25)
        log.train(step, 4.0, 1e-3, 1.0)
    log.file.write("s:6 trl:3.9")  # a line cut short by a kill
    log.file.close()
    MainLog(str(tmp_path), enabled=True, resume_step=4, resume_step_evaluated=evaluated).file.close()
    assert [re.match(r"s:\d+ \w+", line).group() for line in main_log(tmp_path).splitlines()] == [
        "s:0 tel", "s:0 eval", "s:0 trl", "s:1 trl", "s:2 tel", "s:2 eval", "s:2 trl", "s:3 trl"] + (
        ["s:4 tel", "s:4 eval"] if evaluated else [])


@pytest.mark.parametrize("B", [4, 2])  # the checkpoint's own layout (llm.c's loader), another (the replay loader)
def test_a_resumed_run_refuses_token_ids_outside_the_vocabulary_too(tmp_path, B):
    """The shard's first two steps are text, the third another tokenizer's ids: the run that saved step 2 never
    read them; its resumption does, and names the shard instead of failing in torch's embedding."""
    from ds_train.data import read_shard, write_shard
    shard = tmp_path / "half.bin"
    write_shard(str(shard), np.concatenate([read_shard(VAL_SHARD)[:2 * 128 + 1], np.full(400, 60000)]))
    flags = [*TINY, "-b", 4, "-d", 128, "--shuffle", 0, "-v", 100, "-m", 1, "-i", shard, "-n", 2, "-o", tmp_path / "run"]
    train([*flags, "-x", 2]).check()
    resumed = train([*flags, "-x", 3, "-y", 1, "-b", B])
    assert resumed.returncode == 2 and "resumed from" in resumed.stdout
    assert resumed.stderr.strip().startswith(f"ds_train: error: {shard}: the token at index 2") and \
        " is 60000, expected ids below the model's vocab_size 50257" in resumed.stderr
