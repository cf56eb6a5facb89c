"""bench/'s scripts where they need no GPU, on real ds_train runs: bench/scaling_table.py, which turns
bench/scaling.sh's runs at 1, 2, 4 and 8 GPUs into tokens/s per GPU and the weak-scaling efficiency,
bench/scaling.sh itself on CPU ranks, bench/host_probe.py, which each of those scripts runs into its results
folder, bench/profile_step.py's reports on a CPU (the host's time by phase, DeepSpeed's Python by function), and
the matmul problems that bench/gemm_algos.py hands cuBLASLt."""

import os
import platform
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO, child_env, free_port, one_rank_run, settings_table, zero_run
from ds_train.build_locks import extensions_root

SCALING_TABLE = os.path.join(REPO, "bench", "scaling_table.py")
STEP_MS = re.compile(r"^step\s+(\d+)/\d+ \|.*?\| (\S+) ms \|", re.M)


def tokens_per_second(stdout: str, first: int, last: int) -> float:
    """Tokens per step over the mean step time of steps first..last, from the console's own lines."""
    ms = [float(t) for step, t in STEP_MS.findall(stdout) if first <= int(step) <= last]
    return int(settings_table(stdout)["total batch size"]) / (sum(ms) / len(ms) / 1000)


def scaling_table(*args):
    return subprocess.run([sys.executable, SCALING_TABLE, *map(str, args)], capture_output=True, text=True)


def scaling_rows(text: str) -> dict:
    """bench/scaling_table.py's table in `text` (from its header line on) as {(run, GPUs): the other columns}."""
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["run", "GPUs"])
    return {tuple(line.split()[:2]): line.split()[2:] for line in lines[header + 1:]}


def assert_one_and_two_rank_rows(rows: dict, run: str, one: float, two: float):
    """The 1- and 2-rank rows of `run`: tokens/s, tokens/s per GPU and the efficiency, from the runs' tokens/s."""
    assert rows[(run, "1")] == [f"{one:.0f}", f"{one:.0f}", "100.0%"]
    assert rows[(run, "2")] == [f"{two:.0f}", f"{two / 2:.0f}", f"{100 * two / (2 * one):.1f}%"]


def test_the_scaling_table_holds_each_run_against_its_one_gpu_run(tmp_path):
    """A 1-rank and a 2-rank ZeRO-1 run stand for 1 and 2 GPUs; a 2-rank ZeRO-3 run has no 1-GPU run to compare
    with, and a run that died before its first step has no figures."""
    runs = {"tiny_z1_gpus1": one_rank_run(), "tiny_z1_gpus2": zero_run(1), "tiny_z3_gpus2": zero_run(3)}
    for name, run in runs.items():
        (tmp_path / f"{name}.log").write_text(run.stdout)
    (tmp_path / "tiny_z1_gpus4.log").write_text(runs["tiny_z1_gpus2"].stdout.split("\nstep ")[0])
    table = scaling_table(*sorted(tmp_path.iterdir()), "--first", 2, "--last", 8)
    assert table.returncode == 0, table.stderr
    rows = scaling_rows(table.stdout)
    one, two = (tokens_per_second(runs[name].stdout, 2, 8) for name in ("tiny_z1_gpus1", "tiny_z1_gpus2"))
    assert_one_and_two_rank_rows(rows, "tiny_z1", one, two)
    assert rows[("tiny_z3", "2")][2] == "-"
    assert rows[("tiny_z1", "4")] == ["no", "step", "lines"]


def test_the_scaling_table_refuses_a_log_it_cannot_place(tmp_path):
    log = tmp_path / "d12_z1.log"
    log.write_text(zero_run(1).stdout)
    table = scaling_table(log)
    assert table.returncode != 0
    assert table.stderr.strip() == f"scaling_table.py: {log}: expected a log named <run>_gpus<N>.log"


def test_the_scaling_script_launches_each_rank_count_at_the_same_per_rank_batch(tmp_path):
    """bench/scaling.sh itself, through DeepSpeed's launcher as on a GPU machine, for the quickstart's model at
    ZeRO-1 on 1 and 2 CPU ranks (DS_ACCELERATOR=cpu from child_env keeps them there on a GPU machine too): each
    rank keeps the micro-batch without accumulation (B × T × ranks tokens a step), and the table holds the 2-rank
    run against the 1-rank one."""
    out = tmp_path / "out"
    env = dict(child_env(), MODELS="tiny", STAGES="1", OUT=str(out), DATA=str(tmp_path / "data"),
               PYTHON=sys.executable, MASTER_PORT=str(free_port()), RANDOM_TOKENS="100000 10000",
               TORCH_EXTENSIONS_DIR=extensions_root())  # the suite's DeepSpeed ops, not the GPU scripts' /tmp folder
    script = subprocess.run(["bash", "bench/scaling.sh", "1", "2"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert script.returncode == 0, script.stderr[-2000:]
    assert "exit status" not in script.stderr, script.stderr[-2000:]
    logs = {n: (out / f"tiny_z1_gpus{n}.log").read_text() for n in (1, 2)}
    for n, log in logs.items():
        settings = settings_table(log)
        assert (settings["num_processes"], settings["micro batch size B"], settings["grad_accum_steps"]) == \
            (str(n), "8", "1")
        assert settings["total batch size"] == str(8 * 32 * n)
    one, two = (tokens_per_second(logs[n], 4, 8) for n in (1, 2))
    assert_one_and_two_rank_rows(scaling_rows(script.stdout), "tiny_z1", one, two)
    assert host_facts((out / "host.txt").read_text())["cpu_cores"] == str(os.cpu_count())  # bench/device_env.sh's


def host_facts(text: str) -> dict:
    return dict(line.split(": ", 1) for line in text.splitlines())


def test_the_host_probe_reports_this_machine():
    """bench/host_probe.py's facts are this machine's (cores, Python, torch, whether there is a GPU), and its
    timings are times: positive and in a plausible range."""
    probe = subprocess.run([sys.executable, os.path.join(REPO, "bench", "host_probe.py")], capture_output=True,
                           text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    facts = host_facts(probe.stdout)
    assert facts["cpu_cores"] == str(os.cpu_count())
    assert facts["python"] == platform.python_version() and facts["torch"] == torch.__version__
    assert facts["cpu"] and facts["cpu"] != "unknown"
    assert 0 < float(facts["python_loop_s"]) < 5 and 0 < float(facts["torch_cpu_op_us"]) < 1000
    assert ("gpu" in facts) == ("cuda_launch_us" in facts) == torch.cuda.is_available()


HOST_LINE = re.compile(r"^host: (\S+) ms from .*; waiting for the GPU (\S+) ms .*, busy (\S+) ms \((\d+)%\); "
                       r"busy / wall by phase: (.*)$", re.M)


def test_the_step_profile_splits_the_host_time_by_phase():
    """bench/profile_step.py on CPU for a tiny model (its CPU mode, which checks the script itself): the kinds
    table, and the host report, whose phases (forward, backward, step, next_batch and the rest) divide the profiled
    step's host time among them, most of it in the labelled ones; on CPU nothing waits for a GPU, so the host is
    busy all of it."""
    env = dict(child_env(), MASTER_PORT=str(free_port()))
    profile = subprocess.run([sys.executable, "bench/profile_step.py", "--ds_config", "ds_configs/quickstart.json",
                              "-e", "gpt2:d2:c64:h2", "-b", "4", "-t", "64", "-d", "512", "-z", "1"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert profile.returncode == 0, profile.stderr[-2000:]
    assert re.search(r"^cpu \| .* B=4 T=64 accum=2 ZeRO-1", profile.stdout, re.M), profile.stdout[-2000:]
    span, waited, busy, percent, phases = HOST_LINE.search(profile.stdout).groups()
    by_phase = {name: (float(b), float(w)) for name, b, w in re.findall(r"(\w+) ([\d.]+) / ([\d.]+)", phases)}
    assert set(by_phase) == {"forward", "backward", "step", "next_batch", "outside"}
    assert 0 <= by_phase["outside"][1] < 0.5 * float(span)  # the rest of the span: the labelled phases do not overlap
    assert float(waited) == 0 and float(busy) == float(span) and percent == "100"
    assert all(b == w for b, w in by_phase.values())
    assert by_phase["forward"][1] > 0 and by_phase["backward"][1] > 0


def test_the_step_profile_names_where_zero3s_python_goes():
    """bench/profile_step.py --python_profile N at ZeRO-3: the step time, one step under cProfile, and N of DeepSpeed's
    functions by cumulative time, most first, each within the profiled step, its engine's entry points left out;
    stage 3's optimizer step and its gradient reduction at the end of each micro-step's backward are among them."""
    env = dict(child_env(), MASTER_PORT=str(free_port()))
    profile = subprocess.run([sys.executable, "bench/profile_step.py", "--ds_config", "ds_configs/quickstart.json",
                              "-e", "gpt2:d2:c64:h2", "-b", "4", "-t", "64", "-d", "512", "-z", "3",
                              "--python_profile", "6"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert profile.returncode == 0, profile.stderr[-2000:]
    out = profile.stdout
    assert re.search(r"^cpu \| .* B=4 T=64 accum=2 ZeRO-3 -r 0 compile=0$", out, re.M), out[-2000:]
    profiled_ms = float(re.search(r"^one step under cProfile: ([\d.]+) ms$", out, re.M).group(1))
    rows = re.findall(r"^(\S+\.py:\S+) +([\d.]+) +(\d+)$", out.split("DeepSpeed function")[1], re.M)
    assert len(rows) == 6, out[-2000:]
    ms = [float(m) for _, m, _ in rows]
    assert ms == sorted(ms, reverse=True) and 0 < ms[0] <= profiled_ms
    assert not any(name.split(":")[0] in ("engine.py", "nvtx.py") for name, _, _ in rows)  # the wrappers left out
    assert any("reduce_epilogue" in name or "reduce_and_partition" in name for name, _, _ in rows), rows
    # the optimizer's step, once a step: on Python 3.12.0-3.12.4 cProfile lost it when it profiled C calls too
    assert ("stage3.py:step", "1") in [(name, calls) for name, _, calls in rows], rows


def test_the_owed_script_checks_its_arguments_before_any_work(tmp_path):
    """bench/owed.sh (the measurements issue 7 still owes, for a GPU box) says in one line what it expected, a
    tree to compare with and known parts, before it writes any shard or log."""
    env = {**os.environ, "DATA": str(tmp_path / "data"), "OUT": str(tmp_path / "out")}
    owed = lambda *args: subprocess.run(["bash", "bench/owed.sh", *args], cwd=REPO, env=env, capture_output=True,
                                        text=True, timeout=60)
    no_tree = owed(str(tmp_path / "missing"))
    assert no_tree.returncode == 2 and "BASE_TREE: expected the folder of the code to compare with" in no_tree.stderr
    bad_part = owed(str(tmp_path), "tests", "ab_d13")
    assert bad_part.returncode == 2 and "unknown part 'ab_d13' (expected some of: tests gemm_algos gemm_ab ab_d12" in bad_part.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


@pytest.fixture
def sweep(monkeypatch):
    """bench/gemm_algos.py as a module (bench/ is not a package)."""
    monkeypatch.syspath_prepend(os.path.join(REPO, "bench"))
    import gemm_algos
    return gemm_algos


def test_the_owed_scripts_gemm_ab_part_reads_the_sweeps_choice_lines(tmp_path, sweep):
    """bench/owed.sh's gemm_ab part takes each model's settings from bench/gemm_algos.py's choice line, and with
    none (or no line) says so and runs nothing."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "gemm_algos.txt").write_text(f"{sweep.choice_line('d24', {}, 1234.5, 1234.5)}\n")
    env = {**os.environ, "DATA": str(tmp_path / "data"), "OUT": str(out), "PYTHON": sys.executable,
           "RANDOM_TOKENS": "100000 10000"}
    owed = subprocess.run(["bash", "bench/owed.sh", str(tmp_path), "gemm_ab"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert owed.returncode == 0, owed.stderr[-2000:]
    assert f"gemm_ab: no choice for d24 in {out}/gemm_algos.txt (none)" in owed.stderr
    assert f"gemm_ab: no choice for d48 in {out}/gemm_algos.txt (no such line)" in owed.stderr
    assert (out / "gemm_ab.done").exists() and not list(out.glob("gemm_d*"))
    line = sweep.choice_line("d48", {"TORCH_BLAS_PREFER_CUBLASLT": "1"}, 100.0, 98.0)
    assert line == "choice d48: TORCH_BLAS_PREFER_CUBLASLT=1 | a micro-step's matmuls 100.0 -> 98.0 ms (-2.0%)"


def column_major(t: torch.Tensor, rows: int, cols: int, ld: int) -> torch.Tensor:
    """The (rows, cols) matrix that cuBLASLt reads from t's memory as column-major with leading dimension ld."""
    return t.flatten()[: cols * ld].view(cols, ld)[:, :rows].T.float()


def test_the_gemm_sweep_poses_each_matmul_as_the_trainer_computes_it(sweep, monkeypatch):
    """bench/gemm_algos.py hands cuBLASLt each of the trainer's matmuls as a column-major problem on the trainer's
    row-major tensors: computed here by cuBLASLt's rules (op(A) @ op(B), then the epilogue's bias, GELU or GELU's
    derivative, into D's memory), each problem gives the trainer's own result, so a candidate that the sweep times
    does the trainer's work. On the CPU, at d12's width and a few rows."""
    monkeypatch.setattr(sweep, "DEVICE", "cpu")
    monkeypatch.setitem(sweep.MICRO_BATCH, "d12", 1)
    monkeypatch.setattr(sweep, "HEAD_ROWS", 64)
    monkeypatch.setattr(sweep, "VOCAB", 320)
    problems = sweep.matmuls("d12")
    assert len(problems) == 15  # four linears' forward, input and weight gradients, and the head's three
    for name, flops, _, lt, ref in problems:
        m, n, k = lt["m"], lt["n"], lt["k"]
        a = column_major(lt["A"], k if lt["transa"] else m, m if lt["transa"] else k, lt["lda"])
        b = column_major(lt["B"], n if lt["transb"] else k, k if lt["transb"] else n, lt["ldb"])
        d = (a.T if lt["transa"] else a) @ (b.T if lt["transb"] else b)
        assert flops == 2 * m * n * k, name
        if lt["epilogue"] in (sweep.BIAS, sweep.GELU_AUX_BIAS):
            d = d + lt["bias"].float()[:, None]
        if lt["epilogue"] == sweep.GELU_AUX_BIAS:
            d = torch.nn.functional.gelu(d, approximate="tanh")
        if lt["epilogue"] == sweep.DGELU:
            d = torch.ops.aten.gelu_backward(d, column_major(lt["aux"], m, n, m), approximate="tanh")
        assert lt["D"].numel() == m * n and lt["ldd"] == m, name
        in_memory = d.T.flatten()  # D, column-major (m, n) with leading dimension m, as the row-major result holds it
        scale = ref.float().abs().max()
        assert ((in_memory - ref.float().flatten()).abs().max() / scale).item() < 1e-2, name


def test_the_gemm_sweep_chooses_torchs_cublaslt_switch_only_where_it_pays(sweep):
    """bench/gemm_algos.py's choice line: torch's cuBLASLt switch only where it shortens PyTorch's matmuls of a
    micro-step by its margin, the micro-step's matmul time counted with each matmul's calls (a block's once a layer,
    the head's once a chunk of rows), the GELU matmuls (no PyTorch call: the heuristic's first, #0) counted as they run."""
    layers, chunks = 12, sweep.MICRO_BATCH["d12"] * 1024 // sweep.HEAD_ROWS
    own = {"c_attn forward": {"torch": [1.0, 1.0, 1.0], "torch-lt": [0.9, 0.9, 0.9], "#0": [1.0, 1.0, 1.0]},
           "head logits": {"torch": [2.0, 2.0, 2.0], "torch-lt": [2.1, 2.1, 2.1], "#0": [2.0, 2.0, 2.0]},
           "mlp.c_fc forward +GELU": {"#0": [1.0, 1.0, 1.0], "#1": [0.9, 0.9, 0.9]}}
    env, before, after = sweep.choices("d12", own)
    assert env == {} and after == before == pytest.approx(layers * (1.0 + 1.0) + chunks * 2.0)  # 12 x -0.1 + 16 x 0.1
    own["head logits"]["torch-lt"] = [1.9, 1.9, 1.9]
    env, before, after = sweep.choices("d12", own)
    assert env == {"TORCH_BLAS_PREFER_CUBLASLT": "1"}
    assert after == pytest.approx(before - layers * 0.1 - chunks * 0.1)
    assert sweep.choices("d12", own, min_lt_gain=0.5)[0] == {}  # 2.8 ms of 44 is 6%
    del own["mlp.c_fc forward +GELU"]["#0"]  # the trainer's own algorithm not timed: the matmul is left out
    assert sweep.choices("d12", own)[1] == pytest.approx(before - layers * 1.0)


def test_the_ab_script_sets_new_env_for_this_trees_runs_only(tmp_path):
    """bench/ab_trees.sh with BASE_TREE . and NEW_ENV (bench/owed.sh's gemm_ab part): the same code with and
    without the settings, alternating, then bench/summarize.py over both sides. Here the setting is the NaN hook,
    which shows in a run's log, at 1 CPU rank of the scaling test's tiny model."""
    out = tmp_path / "out"
    env = dict(child_env(), OUT=str(out), DATA=str(tmp_path / "data"), PYTHON=sys.executable,
               RANDOM_TOKENS="100000 10000", NEW_ENV="DS_TRAIN_NAN_AT_STEP=2", MASTER_PORT=str(free_port()),
               TORCH_EXTENSIONS_DIR=extensions_root())
    flags = ["--ds_config", "ds_configs/quickstart.json", "-e", "gpt2:d2:c64:h2", "-b", "8", "-t", "32", "-z", "1"]
    script = subprocess.run(["bash", "bench/ab_trees.sh", ".", "nan_hook", "1", "5", *flags], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert script.returncode == 0 and "exit status" not in script.stderr, script.stderr[-2000:]
    base, new = ((out / "nan_hook" / f"{side}_1.log").read_text() for side in ("base", "new"))
    assert "skipped the update of step 3: non-finite loss" in new  # the hook counts steps from 0
    assert "skipped the update" not in base
    assert len(STEP_MS.findall(base)) == len(STEP_MS.findall(new)) == 5
    assert (out / "nan_hook" / "summary.txt").read_text() == script.stdout
    assert (out / "nan_hook" / "new_env.txt").read_text() == "DS_TRAIN_NAN_AT_STEP=2\n"
