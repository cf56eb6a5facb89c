"""The reproduction scripts in scripts/: they parse, their dry runs plan llm.c's runs, and in smoke mode they
train for real on the CPU through each launcher, resuming after a crash until the DONE marker exists."""

import contextlib
import glob
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import (REPO, child_env, cmdline, descendants, five_hellaswag_examples, free_port, kill_tree, run_process,
                      wait_for)
from ds_train import distributed

SCRIPTS = sorted(glob.glob(os.path.join(REPO, "scripts", "run_*.sh")))
# llm.c's runs (../shared/REFERENCE.md): steps, tokens per step, micro-batch, sequence length
LLMC = {"gpt2_124M": (18865, 524288, 64, 1024), "gpt2_350M": (60000, 524288, 64, 1024),
        "gpt2_774M": (286102, 524288, 32, 1024), "gpt2_1558M": (32000, 1048576, 16, 1024),
        "gpt3_125M": (572204, 524288, 32, 2048)}
PLAN = re.compile(r"^dry run \| ranks (\d+) \| steps (\d+) \| tokens per step (\d+) \| micro-batch (\d+) x (\d+) \| "
                  r"grad accumulation (\d+) \|", re.M)


def script_env(**extra) -> dict:
    env = child_env(threads=1)
    env.update(PYTHON=sys.executable,
               MASTER_PORT=str(free_port()), OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env.update({key: str(value) for key, value in extra.items()})
    return env


def test_the_scripts_are_the_five_llmc_runs_and_parse():
    assert sorted(os.path.basename(s)[4:-3] for s in SCRIPTS) == sorted(LLMC)
    for path in [*SCRIPTS, *glob.glob(os.path.join(REPO, "scripts", "*.sh")), os.path.join(REPO, "scripts", "slurm.sbatch")]:
        checked = run_process(["bash", "-n", path], timeout=30)
        assert checked.returncode == 0, (path, checked.stderr)


@pytest.mark.parametrize("name", sorted(LLMC))
def test_dry_run_plans_llmc_run_on_8_gpus(name, tmp_path):
    """And on 1 GPU the same steps and tokens per step, with 8 times the accumulation."""
    steps, tokens, B, T = LLMC[name]
    for gpus in (8, 1) if name == "gpt2_1558M" else (8,):
        done = run_process(["bash", os.path.join(REPO, "scripts", f"run_{name}.sh")], timeout=120,
                           env=script_env(DRY_RUN=1, NUM_GPUS=gpus, OUT_DIR=tmp_path / "out"))
        assert done.returncode == 0, done.stderr[-2000:]
        plan = PLAN.search(done.stdout)
        assert plan, done.stdout[-2000:]
        assert tuple(map(int, plan.groups())) == (gpus, steps, tokens, B, T, tokens // (B * T * gpus))
        assert "memory per GPU (estimate; ZeRO-1 over" in done.stdout
        assert not os.path.exists(tmp_path / "out")  # a dry run writes nothing


@pytest.mark.parametrize("variable, value, least", [("NUM_GPUS", "0", 1), ("NUM_NODES", "0", 1), ("NUM_GPUS", "abc", 1),
                                                   ("MAX_FAILS", "-1", 0)])
def test_a_count_that_is_not_a_whole_number_is_refused_before_anything_runs(variable, value, least, tmp_path):
    # NUM_GPUS=0 once made DRY_RUN=1 pass --dry_run 0, which is a real training run
    done = run_process(["bash", os.path.join(REPO, "scripts", "run_gpt2_124M.sh")], timeout=60,
                       env=script_env(DRY_RUN=1, OUT_DIR=tmp_path / "out", **{variable: value}))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"{os.path.join(REPO, 'scripts', 'run_gpt2_124M.sh')}: {variable}={value}: "
                                                f"expected a whole number >= {least}"]
    assert not os.path.exists(tmp_path / "out")


def test_a_bad_json_stops_the_resume_loop_at_once(tmp_path):
    """A setting DeepSpeed would fail on inside deepspeed.initialize (a monitor whose package is missing) is
    refused up front with exit 2, which ends the loop, instead of a traceback that it would retry for ever."""
    if importlib.util.find_spec("comet_ml"):
        pytest.skip("comet_ml is installed here")
    ds_config = tmp_path / "ds.json"
    ds_config.write_text('{"train_micro_batch_size_per_gpu": 4, "comet": {"enabled": true}}')
    proc, log = start("run_gpt2_124M.sh", str(tmp_path / "out"), tmp_path / "script.log", NUM_GPUS=1,
                      SMOKE_DS_CONFIG=str(ds_config))
    output = finish(proc, log, timeout=180)
    assert proc.returncode == 2, output[-3000:]
    assert "comet.enabled needs the comet_ml package" in output and "Traceback" not in output
    assert output.count("ds_train: error:") == 1  # one launch, no retries


def ranks_of(proc):
    """The training ranks below the script's process: Python running ds_train/main.py, not its dry run (none once
    the script has ended; a rank that ends while they are listed is not one)."""
    return [p for p, args in ((p, cmdline(p)) for p in descendants(proc))
            if any(arg.endswith("ds_train/main.py") for arg in args) and "--dry_run" not in args
            and os.path.basename(args[0]).startswith("python")]


def start(script, out_dir, log_path, args=(), **env):
    log = open(log_path, "w+")
    proc = subprocess.Popen(["bash", os.path.join(REPO, "scripts", script), *args], cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=script_env(SMOKE=1, OUT_DIR=out_dir, **env))
    return proc, log


def finish(proc, log, timeout=600):
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    log.seek(0)
    return log.read()


def test_smoke_runs_survive_a_crash_and_finish(tmp_path):
    """SMOKE=1 for a GPT-2 and the GPT-3 script at once: a 2-layer model for 6 steps on one CPU rank under the
    deepspeed launcher, a checkpoint every 2 steps, each script's own flags otherwise. Each rank is killed with
    SIGKILL after step 3; each script's loop resumes from step 2 and finishes with the DONE marker. (The loop is
    scripts/lib.sh's, shared by all five; every script's flags are checked by the dry-run test above.)"""
    names = ["gpt2_124M", "gpt3_125M"]
    # MAX_FAILS=1: the loop retries only a run that saved a new checkpoint before it failed, as this one did
    runs = {name: start(f"run_{name}.sh", str(tmp_path / name), tmp_path / f"{name}.log", NUM_GPUS=1, MAX_FAILS=1)
            for name in names}
    alive, deadline = dict(runs), time.time() + 300
    while alive and time.time() < deadline:  # each is killed as soon as it has passed step 3
        for name, (proc, log) in list(alive.items()):
            log.seek(0)
            if re.search(r"^step +3/6", log.read(), re.M):
                for rank in ranks_of(proc):
                    rank.kill()
                del alive[name]
            else:
                assert proc.poll() is None, f"{name} ended before step 3"
        time.sleep(0.1)
    assert not alive, f"no step 3 within 300 s: {sorted(alive)}"
    for name, (proc, log) in runs.items():
        out, text = str(tmp_path / name), finish(proc, log)
        assert proc.returncode == 0, (name, text[-3000:])
        assert "resuming in 1 s" in text and f"resumed from {out}/checkpoints/step_00000002 at step 2" in text, name
        assert os.path.exists(os.path.join(out, "DONE_00000006")) and f"{out}/DONE_00000006 exists" in text, name
        logged = [int(m.group(1)) for m in re.finditer(r"^s:(\d+) trl:", open(os.path.join(out, "main.log")).read(), re.M)]
        assert logged == list(range(6)), name  # every step once, across the crash


def test_the_loop_gives_up_on_a_crash_that_recurs_before_any_checkpoint(tmp_path):
    """A crash that comes back on every try before any progress (a lost node, a broken install): each rank is killed
    with SIGKILL as soon as it starts. With MAX_FAILS=2 the loop launches twice, then stops with the last status and
    says why, instead of relaunching for ever as llm.c's scripts do (MAX_FAILS=0). Under mpirun, whose launch costs
    no Python of its own (the loop is the same for every launcher)."""
    out = str(tmp_path / "run")
    proc, log = start("run_gpt2_124M.sh", out, tmp_path / "script.log", NUM_GPUS=1, MAX_FAILS=2, LAUNCHER="mpirun",
                      MPIRUN_ARGS="--oversubscribe -x MASTER_PORT")
    killed, deadline = set(), time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        for rank in ranks_of(proc):
            with contextlib.suppress(psutil.Error):
                rank.kill()
                killed.add(rank.pid)
        time.sleep(0.05)
    text = finish(proc, log, timeout=60)
    assert len(killed) == 2, text[-3000:]
    assert proc.returncode not in (0, 2), text[-3000:]
    assert text.count("resuming in 1 s") == 1
    assert (f"2 runs in a row failed without saving a new checkpoint (the last with exit status {proc.returncode}); "
            f"giving up (MAX_FAILS=2). Fix what the log above shows, then run the same command again to resume from "
            f"{out}") in text
    assert not os.path.exists(os.path.join(out, "DONE_00000006"))


def test_sigterm_to_the_script_saves_and_stops_it(tmp_path):
    """The 124M script on 2 CPU ranks. SIGTERM (or Ctrl-C) to the script, not to its ranks: the ranks save at
    the next step boundary, the loop stops instead of restarting, and the same command again finishes."""
    out = str(tmp_path / "run")
    proc, log = start("run_gpt2_124M.sh", out, tmp_path / "script.log")
    wait_for(log, r"^step +3/6", proc)
    os.kill(proc.pid, signal.SIGTERM)
    text = finish(proc, log)
    assert proc.returncode == 143, text[-3000:]
    assert "checkpoint saved; resume with -y 1" in text and "stopped on SIGTERM" in text
    assert not os.path.exists(os.path.join(out, "DONE_00000006"))
    proc, log = start("run_gpt2_124M.sh", out, tmp_path / "again.log")
    text = finish(proc, log)
    assert proc.returncode == 0 and os.path.exists(os.path.join(out, "DONE_00000006")), text[-3000:]
    logged = [int(m.group(1)) for m in re.finditer(r"^s:(\d+) trl:", open(os.path.join(out, "main.log")).read(), re.M)]
    assert logged == list(range(6))


def test_a_stop_during_the_last_evaluation_leaves_it_to_the_same_command_again(tmp_path):
    """SIGTERM to the script while the last step's HellaSwag runs (the shipped 10,042 examples: minutes on 2 CPU
    ranks): the ranks cut it short and save the final checkpoint with an EVAL_PENDING marker beside its DONE, and the
    same command again resumes at the last step, evaluates it (here on 5 examples) and only then calls the run
    complete; before the marker it counted the run done at the DONE marker and the final evaluation never ran."""
    out = str(tmp_path / "run")
    evaluation = ["-v", "6", "-h", "1"]  # the val loss at steps 0 and 6, HellaSwag at step 6
    proc, log = start("run_gpt2_124M.sh", out, tmp_path / "script.log", args=evaluation)
    wait_for(log, r"^step +6/6[\s\S]*^val loss", proc)
    os.kill(proc.pid, signal.SIGTERM)
    text = finish(proc, log)
    assert proc.returncode == 143, text[-3000:]
    assert "HellaSwag at step 6 cut short on SIGTERM" in text and "HellaSwag: " not in text, text[-3000:]
    assert "stopped on SIGTERM; run the same command again" in text and "the run is complete" not in text
    assert os.path.exists(os.path.join(out, "DONE_00000006")) and os.path.exists(os.path.join(out, "EVAL_PENDING_00000006"))
    proc, log = start("run_gpt2_124M.sh", out, tmp_path / "again.log",
                      args=[*evaluation, "--hellaswag_data", five_hellaswag_examples(tmp_path)])
    text = finish(proc, log)
    assert proc.returncode == 0, text[-3000:]
    assert "evaluating step 6 again" in text and text.count("HellaSwag: ") == 1 and "/5 = " in text, text[-3000:]
    assert "the run is complete" in text and not os.path.exists(os.path.join(out, "EVAL_PENDING_00000006"))
    with open(os.path.join(out, "main.log")) as f:
        assert [line.split()[0] for line in f if "trl:" not in line] == ["s:0", "s:6", "s:6"]  # each evaluation once


def test_mpirun_variant(tmp_path):
    out = str(tmp_path / "run")
    proc, log = start("run_gpt2_124M.sh", out, tmp_path / "script.log", LAUNCHER="mpirun", NUM_GPUS=2,
                      MPIRUN_ARGS="--oversubscribe -x MASTER_PORT")
    text = finish(proc, log)
    assert proc.returncode == 0, text[-3000:]
    assert "| num_processes         | 2 " in text and os.path.exists(os.path.join(out, "DONE_00000006"))


def test_hostfile_variant_as_two_nodes_started_by_hand(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    out, port = str(tmp_path / "run"), free_port()
    nodes = [start("run_gpt2_124M.sh", out, tmp_path / f"node{rank}.log", LAUNCHER="hostfile", HOSTFILE=hostfile,
                   NODE_RANK=rank, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NUM_GPUS=1) for rank in (0, 1)]
    texts = [finish(proc, log) for proc, log in nodes]
    assert [proc.returncode for proc, _ in nodes] == [0, 0], texts[0][-2000:] + texts[1][-2000:]
    assert "| num_processes         | 2 " in texts[0] and "node_rank=1" in texts[1]
    assert os.path.exists(os.path.join(out, "DONE_00000006"))


def test_a_usage_error_stops_the_loop_instead_of_retrying(tmp_path):
    done = run_process(["bash", os.path.join(REPO, "scripts", "run_gpt2_124M.sh"), "-b", "0"], timeout=300,
                       env=script_env(SMOKE=1, OUT_DIR=tmp_path / "run"))
    assert done.returncode == 2
    assert "ds_train: error: -b 0: the micro-batch must be at least 1" in done.stderr
    assert "usage error (exit 2: bad input" in done.stderr and "resuming" not in done.stderr


def test_srun_task_turns_slurm_task_ids_into_ranks(tmp_path):
    """What srun does under scripts/slurm.sbatch, without SLURM: two tasks with SLURM's task variables."""
    port = free_port()
    cmd = ["bash", os.path.join(REPO, "scripts", "srun_task.sh"), sys.executable, os.path.join(REPO, "ds_train", "main.py"),
           "--ds_config", os.path.join(REPO, "ds_configs", "quickstart.json"), "-e", "gpt2:d2:c64:h2", "-t", "32",
           "-b", "4", "-x", "2", "-v", "10", "-m", "1", "-s", "0"]
    tasks = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=script_env(SLURM_PROCID=task, SLURM_LOCALID=task, SLURM_NTASKS=2,
                                             MASTER_ADDR="127.0.0.1", MASTER_PORT=port)) for task in (0, 1)]
    outputs = [task.communicate(timeout=300)[0] for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "| num_processes         | 2 " in outputs[0] and re.search(r"^step +2/2 \|", outputs[0], re.M)


LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "LOCAL_SIZE", "OMPI_COMM_WORLD_RANK",
                 "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE", "PMI_RANK", "PMI_SIZE",
                 "MPI_LOCALRANKID", "MPI_LOCALNRANKS", "PALS_LOCAL_RANKID", "PALS_LOCAL_SIZE")


def srun_task_env(**slurm) -> dict:
    """What scripts/srun_task.sh exports for a task with these SLURM variables."""
    env = dict(os.environ, **{k: str(v) for k, v in slurm.items()})
    out = subprocess.run(["bash", os.path.join(REPO, "scripts", "srun_task.sh"), "env"], env=env, capture_output=True,
                         text=True, check=True).stdout
    return {k: v for k, v in (line.split("=", 1) for line in out.splitlines() if "=" in line) if k in LAUNCHER_VARS}


@pytest.mark.parametrize("launcher, env, place", [
    ("deepspeed", dict(RANK=11, WORLD_SIZE=16, LOCAL_RANK=3, LOCAL_SIZE=8), (11, 3, 16, 8)),
    ("torchrun", dict(RANK=5, WORLD_SIZE=8, LOCAL_RANK=1, LOCAL_WORLD_SIZE=4), (5, 1, 8, 4)),
    ("Open MPI", dict(OMPI_COMM_WORLD_RANK=9, OMPI_COMM_WORLD_SIZE=16, OMPI_COMM_WORLD_LOCAL_RANK=1,
                      OMPI_COMM_WORLD_LOCAL_SIZE=8), (9, 1, 16, 8)),
    ("MPICH", dict(PMI_RANK=6, PMI_SIZE=8, MPI_LOCALRANKID=2, MPI_LOCALNRANKS=4), (6, 2, 8, 4)),
    ("Cray PALS", dict(PMI_RANK=6, PMI_SIZE=8, PALS_LOCAL_RANKID=2, PALS_LOCAL_SIZE=4), (6, 2, 8, 4)),
    ("srun_task.sh", "8(x2)", (9, 1, 16, 8)),
    ("srun_task.sh, uneven nodes", "8,4", (9, 1, 16, None)),  # not said: --auto_fit counts every rank
    ("a plain python", {}, (0, 0, 1, 1)),
])
def test_each_launcher_says_where_a_rank_sits(monkeypatch, launcher, env, place):
    """Rank, local rank (the GPU a rank takes), world size and the ranks on its node (whose host memory
    --auto_fit shares out), from each launcher's variables."""
    if isinstance(env, str):
        env = srun_task_env(SLURM_PROCID=9, SLURM_LOCALID=1, SLURM_NTASKS=16, SLURM_STEP_TASKS_PER_NODE=env)
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    distributed.discover.cache_clear()
    try:
        found = distributed.discover()
    finally:
        distributed.discover.cache_clear()
    assert (found.rank, found.local_rank, found.world_size, found.local_world_size) == place
