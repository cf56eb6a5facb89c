"""Helpers for running ds_train for real: as a plain process (forked from tests/zygote.py unless TEST_FORK=0),
under the deepspeed launcher, or under mpirun."""

import atexit
import fcntl
import gzip
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

import psutil
import pytest

from ds_train.config import DEFAULT_HELLASWAG
from ds_train.distributed import free_port  # noqa: F401 (the tests' MASTER_PORTs, as a single run picks its own)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(REPO, "ds_train", "main.py")
BIN = os.path.dirname(sys.executable)
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
ASSETS = os.path.join(REPO, "ds_train", "assets")
TRAIN_SHARD = os.path.join(ASSETS, "tinyshakespeare", "tiny_shakespeare_train.bin")
VAL_SHARD = os.path.join(ASSETS, "tinyshakespeare", "tiny_shakespeare_val.bin")
CPU_CONFIG = os.path.join(REPO, "ds_configs", "quickstart.json")

# a model and batch small enough that a 2-rank CPU run takes seconds
TINY = ["-e", "gpt2:d2:c64:h2", "-t", "32", "-s", "0"]

TABLE_ROW = re.compile(r"^\| (.+?)\s+\| (.+?)\s+\|$", re.M)  # a row of the settings table a run prints first
STEP_LINE = re.compile(r"^step +(\d+)/(\d+) \| loss ([\d.]+) \| norm ([\d.]+) \| lr ([\d.e+-]+)")
VAL_LINE = re.compile(r"^val loss ([\d.]+)")


def shared_path(*parts):
    """A file under ../shared/data, or skip the test when this checkout has no ../shared."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"reference data not available: {path}")
    return path


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    losses: list = field(default_factory=list)  # train loss per step, from the console line
    norms: list = field(default_factory=list)
    lrs: list = field(default_factory=list)
    val_losses: list = field(default_factory=list)
    output_dir: str = None

    def check(self):
        assert self.returncode == 0, f"run failed ({self.returncode}):\n{self.stdout[-3000:]}\n{self.stderr[-3000:]}"
        return self


def five_hellaswag_examples(tmp_path) -> str:
    """The shipped HellaSwag's first 5 examples in a file of their own: for a resumed run's quick evaluation."""
    path = tmp_path / "hellaswag_5.jsonl"
    with gzip.open(DEFAULT_HELLASWAG, "rt") as f:
        path.write_text("".join(f.readlines()[:5]))
    return str(path)


def parse(proc) -> Run:
    run = Run(proc.returncode, proc.stdout, proc.stderr)
    for line in proc.stdout.splitlines():
        line = re.sub(r"^\[\d+,\d+\]<stdout>:", "", line)  # mpirun --tag-output
        if m := STEP_LINE.match(line):
            run.losses.append(float(m.group(3)))
            run.norms.append(float(m.group(4)))
            run.lrs.append(float(m.group(5)))
        elif m := VAL_LINE.match(line):
            run.val_losses.append(float(m.group(1)))
    return run


def settings_table(stdout: str) -> dict:
    """The settings table at the top of a run's console output, as {name: value}."""
    return dict(TABLE_ROW.findall(stdout))


def child_env(threads: int = 1, gpu: bool = False) -> dict:
    """The environment of every ds_train process a test starts. CUDA_VISIBLE_DEVICES is emptied and DeepSpeed's
    accelerator set to its CPU one: the runs compare fp32 results on the CPU with gloo, 2 ranks each, on a GPU
    machine too (where 2 ranks would otherwise ask for 2 GPUs, and bf16/compile defaults would change what is
    compared). DS_ACCELERATOR=cpu also keeps ranks from DeepSpeed's launcher there, which hands each rank
    CUDA_VISIBLE_DEVICES=0,1,... again (ds_train/main.py hides the GPUs when it is set). With gpu, for the
    GPU-only tests' one process: neither, so that it sees the GPUs this process sees."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    if not gpu:
        env.update(CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


# Most ds_train runs are forked from tests/zygote.py, a Python that has already imported torch and DeepSpeed: a
# real process running ds_train's main() as `python ds_train/main.py` would, without the 6.5 s of imports each
# (TEST_FORK=0: every run exec'd). The launchers (deepspeed, mpirun, the scripts) are always exec'd for real.
FORK_RUNS = os.environ.get("TEST_FORK", "1") != "0"
ZYGOTE_SCRIPT = os.path.join(REPO, "tests", "zygote.py")


def is_ds_train_run(cmd) -> bool:
    return [str(part) for part in cmd[:2]] == [sys.executable, MAIN]


class ForkedProcess:
    """A run that the zygote forked, with what run_process and run_ranks use of a Popen: pid, wait, poll."""

    def __init__(self, conn: socket.socket):
        self.conn = conn
        self.pid = self._receive()
        self.returncode = None

    def _receive(self) -> int:
        message = self.conn.recv(64)
        if not message:
            raise RuntimeError("tests/zygote.py's handler ended without an answer")
        return int(message)

    def wait(self, timeout=None) -> int:
        if self.returncode is None:
            self.conn.settimeout(timeout)
            try:
                self.returncode = self._receive()
            except socket.timeout:
                raise subprocess.TimeoutExpired(f"ds_train run {self.pid}", timeout) from None
            self.conn.close()
        return self.returncode

    def poll(self):
        if self.returncode is None:
            self.conn.setblocking(False)
            try:
                self.returncode = self._receive()
                self.conn.close()
            except BlockingIOError:
                pass
        return self.returncode


class Zygote:
    """tests/zygote.py for this pytest process: started on first use, killed when the process exits."""

    def __init__(self):
        self.proc = None

    def start(self):
        self.folder = tempfile.mkdtemp(prefix="ds_train_zygote_")
        self.path = os.path.join(self.folder, "socket")
        self.log = open(os.path.join(self.folder, "stderr"), "w+")
        self.proc = subprocess.Popen([sys.executable, ZYGOTE_SCRIPT, self.path], cwd=REPO, env=child_env(),
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        atexit.register(self.stop)
        for line in self.proc.stdout:  # what the imports print (DeepSpeed logs to stdout), then "ready"
            if line == "ready\n":
                return
        raise RuntimeError(f"tests/zygote.py did not start ({self.proc.wait()}):\n{read_back(self.log)[-3000:]}")

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def spawn(self, cmd, env, cwd, stdout, stderr) -> ForkedProcess:
        if self.proc is None:
            self.start()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        conn.connect(self.path)
        request = {"argv": [str(part) for part in cmd[1:]], "env": dict(os.environ if env is None else env),
                   "cwd": str(cwd)}
        socket.send_fds(conn, [json.dumps(request).encode()], [stdout.fileno(), stderr.fileno()])
        return ForkedProcess(conn)


ZYGOTE = Zygote()


def start(cmd, env, cwd, stdout, stderr, fork: bool = FORK_RUNS):
    """`cmd` in a session of its own, writing to the files `stdout` and `stderr`: forked from the zygote if it
    is a ds_train run and `fork`, else exec'd. -> a Popen, or what a ForkedProcess has of one."""
    if fork and is_ds_train_run(cmd):
        return ZYGOTE.spawn(cmd, env, cwd, stdout, stderr)
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=True, start_new_session=True)


def with_sigint(disposition):
    """For Popen's preexec_fn: the child starts with SIGINT at `disposition`, as a terminal's foreground job (SIG_DFL)
    or a shell's background job (SIG_IGN) does, whatever pytest's worker has."""
    return lambda: signal.signal(signal.SIGINT, disposition)


def wait_all(procs, timeout):
    """Wait for each of `procs`; any still running after a timeout or an error is killed with all it started."""
    try:
        for proc in procs:
            proc.wait(timeout=timeout)
    finally:
        for proc in procs:
            if proc.poll() is None:
                kill_tree(proc)


def cmdline(process: psutil.Process) -> list[str]:
    """process's command line, or [] once it has ended: a process listed among another's children may exit before
    its command line is read (a zombie until its parent reaps it, which psutil refuses to read)."""
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def descendants(proc) -> list[psutil.Process]:
    """Every process below `proc` (a Popen), or [] once it has ended."""
    try:
        return psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        return []


def kill_tree(proc):
    """SIGKILL to `proc`'s process group and to every process below it: Open MPI's mpirun puts each rank in a
    process group of its own, which a killed mpirun cannot pass the signal on to, so a hung mpirun test left
    its ranks running (and holding their ports and memory) after killpg alone."""
    below = descendants(proc)
    os.killpg(proc.pid, signal.SIGKILL)
    for child in below:
        try:
            child.kill()
        except psutil.Error:  # gone already
            pass
    proc.wait()


def run_process(cmd, env=None, timeout: int = 600, fork: bool = FORK_RUNS) -> subprocess.CompletedProcess:
    """subprocess.run in its own process group, all of which is killed on timeout: a launcher's ranks and
    a JIT build's compilers too, so that a hung test leaves nothing running (or holding a build lock).
    A ds_train run (`python ds_train/main.py ...`) is forked from the zygote if `fork`."""
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = start(cmd, env, REPO, out, err, fork)
    wait_all([proc], timeout)
    return subprocess.CompletedProcess(cmd, proc.returncode, read_back(out), read_back(err))


def read_back(file) -> str:
    file.seek(0)
    return file.read()


def wait_for(log, pattern, proc, timeout=300):
    """Until `pattern` appears in the file `log` that the running `proc` writes (polled every 50 ms)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        log.seek(0)
        if re.search(pattern, log.read(), re.M):
            return
        assert proc.poll() is None, f"the process ended before {pattern!r}:\n{log.read()[-3000:]}"
        time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} within {timeout} s")


def start_ranks(cmd, ranks, env: dict, world_size: int = None, fork: bool = FORK_RUNS):
    """run_ranks' ranks, started and left running -> (the processes, each one's (stdout, stderr) files)."""
    port = str(free_port())
    started = list(range(ranks)) if isinstance(ranks, int) else list(ranks)
    world_size = world_size or len(started)
    outputs = [(tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")) for _ in started]
    rank_envs = [dict({"MASTER_ADDR": "127.0.0.1", **env}, RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size), MASTER_PORT=port) for rank in started]
    return [start(cmd, rank_env, REPO, out, err, fork) for rank_env, (out, err) in zip(rank_envs, outputs)], outputs


def run_ranks(cmd, ranks, env: dict, timeout: int, world_size: int = None,
              fork: bool = FORK_RUNS) -> subprocess.CompletedProcess:
    """The ranks started directly, each with RANK, LOCAL_RANK, WORLD_SIZE and MASTER_ADDR/PORT set, as torchrun
    and srun (scripts/srun_task.sh) start them: a real multi-process job without the seconds that the
    deepspeed launcher's own two processes take to start (its tests are in test_cli, test_resume, test_scripts
    and the hostfile and /dev/shm tests). `ranks`: how many, or which (a list) of `world_size` (default: all)
    to start. MASTER_ADDR is 127.0.0.1 unless `env` has one. -> the first started rank's stdout, every rank's
    stderr, the first failing status."""
    procs, outputs = start_ranks(cmd, ranks, env, world_size, fork)
    wait_all(procs, timeout)
    texts = [(read_back(out), read_back(err)) for out, err in outputs]
    status = next((proc.returncode for proc in procs if proc.returncode), 0)
    return subprocess.CompletedProcess(cmd, status, texts[0][0], "".join(err for _, err in texts))


def train(args, ranks: int = 1, launcher: str = "python", ds_config: str = CPU_CONFIG, timeout: int = 600,
          extra_env=None, master_port=None) -> Run:
    """Run ds_train/main.py for real and parse its console output (master_port: for the deepspeed and mpirun
    launchers, else a free one)."""
    cmd_args = [MAIN, "--ds_config", ds_config, *map(str, args)]
    master_port = str(master_port or free_port())
    env = child_env(threads=1 if ranks > 1 else 2)
    env.update(extra_env or {})
    if launcher == "python":
        assert ranks == 1
        cmd = [sys.executable, *cmd_args]
    elif launcher == "deepspeed":
        cmd = [os.path.join(BIN, "deepspeed"), "--num_gpus", str(ranks), "--master_port", master_port, *cmd_args]
    elif launcher == "env":
        return parse(run_ranks([sys.executable, *cmd_args], ranks, env, timeout))
    elif launcher == "mpirun":
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", MASTER_PORT=master_port)
        cmd = [os.path.join(BIN, "mpirun"), "--oversubscribe", "-np", str(ranks), "-x", "MASTER_PORT",
               "-x", "OMP_NUM_THREADS", "-x", "PYTHONUNBUFFERED", sys.executable, *cmd_args]
    else:
        raise ValueError(launcher)
    return parse(run_process(cmd, env=env, timeout=timeout))


# Runs shared by the tests that compare with them: each is made once per test session, by whichever pytest-xdist
# worker asks first while the other waits on its lock, so that no test file has to stay on one worker. The
# controller process names the folder (its children, the workers, inherit it) and removes it at the end.
RUNS_DIR_VAR = "DS_TRAIN_TEST_RUNS_DIR"
_runs = {}


def pytest_configure(config):
    if not hasattr(config, "workerinput") and RUNS_DIR_VAR not in os.environ:  # the controller, or a run without -n
        os.environ[RUNS_DIR_VAR] = tempfile.mkdtemp(prefix="ds_train_test_runs_")
        config._ds_train_runs_dir = os.environ[RUNS_DIR_VAR]


def pytest_collection_modifyitems(items):
    """Tests marked mostly_waits go first. Each holds a pytest-xdist worker for a minute while using next to no CPU,
    which the other worker's tests fill when it runs early; run last (test_training.py comes late), that minute was
    the suite's idle tail, the CPU 9% busy."""
    items.sort(key=lambda item: item.get_closest_marker("mostly_waits") is None)  # a stable sort: the rest keep order


def pytest_unconfigure(config):
    if runs_dir := getattr(config, "_ds_train_runs_dir", None):
        shutil.rmtree(runs_dir, ignore_errors=True)
        del os.environ[RUNS_DIR_VAR]


STEPS = 8
# the equivalence runs: total batch 256 tokens = 8 rows of T=32; the lr warms up and decays, so every step
# sets a new rate; a checkpoint at the end (-n) for the export tests
COMMON = [*TINY, "-x", STEPS, "-v", 4, "-m", 2, "-l", "2e-3", "-u", 2, "-q", 0.1, "--shuffle", 0, "-d", 256,
          "-s", STEPS, "-g", 24]


def cached_train(name: str, args, **kwargs) -> Run:
    """The run `name`, made on first use in this session (its -o is `name` in the session's runs folder), then read back."""
    if name not in _runs:
        runs_dir = os.environ[RUNS_DIR_VAR]
        out, saved = os.path.join(runs_dir, name), os.path.join(runs_dir, f"{name}.json")
        with open(os.path.join(runs_dir, f"{name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # the other worker, if it is making this run, finishes it first
            if not os.path.exists(saved):
                made = train([*args, "-o", out], **kwargs)
                with open(saved + ".part", "w") as f:
                    json.dump(asdict(made), f)
                os.replace(saved + ".part", saved)
            with open(saved) as f:
                _runs[name] = Run(**{**json.load(f), "output_dir": out})
    return _runs[name].check()


def zero_run(stage: int) -> Run:
    """2 ranks, ZeRO `stage`, B=4, checkpointed at its last step."""
    return cached_train(f"zero{stage}", [*COMMON, "-b", 4, "-z", stage, "-n", STEPS], ranks=2, launcher="env")


def one_rank_run() -> Run:
    """1 rank, ZeRO-1, B=4 and 2 micro-steps: zero_run's total batch on half the ranks."""
    return cached_train("one_rank", [*COMMON, "-b", 4, "-z", 1, "-m", 4], ranks=1, launcher="python")
