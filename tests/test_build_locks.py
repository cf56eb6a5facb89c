"""JIT builds' lock files (ds_train/build_locks.py): a run stopped inside a build leaves no lock behind, and one
found at the start is said at once, or is an error when it is older than any build (torch <= 2.13, whose lock is
the file; torch >= 2.14 holds an flock on it, which dies with its holder). The build stopped here is
DeepSpeed's shared-memory all-reduce op, which a CPU run starts in init_distributed when TORCH_EXTENSIONS_DIR
is fresh."""

import fcntl
import glob
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import CPU_CONFIG, MAIN, REPO, TINY, child_env, with_sigint
from ds_train import build_locks
from ds_train.errors import UserError

ARGS = [*TINY, "-x", 2, "-v", 2, "-m", 1, "-b", 2, "-d", 64]


def locks(root) -> list:
    return glob.glob(os.path.join(root, "*", "lock"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_inside_a_build_ends_the_run_at_once_and_leaves_no_lock(tmp_path, sig):
    """SIGTERM or Ctrl-C before training began (here: while DeepSpeed builds its shm op, holding its lock) ends the
    run with one line and 143 or 130, as a run the signal killed; the build unwinds and removes its lock file, where
    SIGTERM's default action, ending the process where it stands, left it for the next run to wait on for ever (torch
    <= 2.13). torch >= 2.14 leaves the file, and what blocks, its flock, ends with the process."""
    root = str(tmp_path / "extensions")
    env = child_env(threads=2)
    env["TORCH_EXTENSIONS_DIR"] = root
    cmd = [sys.executable, MAIN, "--ds_config", CPU_CONFIG, *map(str, ARGS)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=with_sigint(signal.SIG_DFL))  # as in a terminal
    deadline = time.time() + 300
    while not locks(root):
        assert proc.poll() is None, f"the run ended before its build began:\n{proc.communicate()[1][-3000:]}"
        assert time.time() < deadline, "no build lock within 300 s"
        time.sleep(0.05)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == f"ds_train: stopped on {sig.name} before training began: nothing to save"
    if build_locks.torch_waits_on_lock_files():
        assert locks(root) == []
    else:
        assert locks(root) and not any(build_locks.is_held(lock) for lock in locks(root))


FINALIZER_SCRIPT = """
import os, signal, sys, time
from ds_train import distributed
distributed.exit_on_stop_signals()

class Collected:
    def __del__(self):  # as a Popen's, collected while a build runs: the signal is handled in here
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):
            pass

try:
    Collected()
    time.sleep(2)  # the run going on: a build, the engine's start
    print("went on", flush=True)
    if sys.argv[1] == "without_the_hook":
        distributed.StopSignal()
    print("trained", flush=True)
except distributed.Terminated as e:
    print("stopped on", e, flush=True)
"""


@pytest.mark.parametrize("how", ["with_the_hook", "without_the_hook"])
def test_a_stop_signal_handled_inside_a_finalizer_is_not_lost(how):
    """A Terminated raised inside a finalizer is one Python prints and ignores: CI once saw a SIGTERM sent during a
    build handled inside a Popen's __del__, and the run trained on and exited 0. The signal is sent again once the
    finalizer is done, so the run ends at once and quietly; failing that, StopSignal ends it before the first step."""
    script = FINALIZER_SCRIPT if how == "with_the_hook" else FINALIZER_SCRIPT.replace(
        "distributed.exit_on_stop_signals()", "distributed.exit_on_stop_signals(); sys.unraisablehook = lambda u: None")
    done = subprocess.run([sys.executable, "-c", script, how], cwd=REPO, env=child_env(), capture_output=True, text=True,
                          timeout=60)
    expected = ["stopped on SIGTERM"] if how == "with_the_hook" else ["went on", "stopped on SIGTERM"]
    assert done.stdout.splitlines() == expected, done.stdout + done.stderr
    if how == "with_the_hook":
        assert done.stderr == ""  # nor Python's "Exception ignored in ..."


def test_a_young_build_lock_is_a_note_and_an_old_one_an_error(tmp_path, monkeypatch):
    """Where the file is the lock (torch <= 2.13), under TORCH_EXTENSIONS_DIR (root/<extension>/lock) and torch's
    default root (root/<python>_<cuda>/...): a lock younger than any build (another run building that extension
    now, or one killed a moment ago) is said, since the run may sit on it next; an old one is an error (a real
    run's: test_cli)."""
    young, old = tmp_path / "fused_adam" / "lock", tmp_path / "py311_cu130" / "ds_train_softmax_grad" / "lock"
    young.parent.mkdir(parents=True)
    young.touch()
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    said = []
    build_locks.check_build_locks(said.append, files_block=True)
    assert len(said) == 1 and re.match(rf"note: {re.escape(str(young))} exists \(\d+ s old\): another process is "
                                       "building that extension", said[0])
    old.parent.mkdir(parents=True)
    old.touch()
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    with pytest.raises(UserError, match=f"^{re.escape(str(old))}: a JIT build's lock left 60 minutes ago"):
        build_locks.check_build_locks(said.append, files_block=True)


def test_where_an_flock_is_the_lock_only_a_held_one_is_said(tmp_path, monkeypatch):
    """torch >= 2.14 holds an flock on the file while it builds and leaves the file after every build: an hour-old
    file nobody holds is no error and no note (it is in every extension's folder), a held one is a note whatever
    its age, and the check lets go of each file it tried (the holder's build is not held up by it)."""
    left, building = tmp_path / "fused_adam" / "lock", tmp_path / "py311_cu130" / "ds_train_softmax_grad" / "lock"
    for lock in (left, building):
        lock.parent.mkdir(parents=True)
        lock.touch()
        an_hour_ago = time.time() - 3600
        os.utime(lock, (an_hour_ago, an_hour_ago))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    said = []
    build_locks.check_build_locks(said.append, files_block=False)
    assert said == []
    with open(building) as holder:  # another open file: flock conflicts between them as between processes
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        build_locks.check_build_locks(said.append, files_block=False)
        assert said == [f"note: {building} is locked: another process is building that extension, and this run "
                        "waits for it"]
    with open(left) as after_the_check:
        fcntl.flock(after_the_check, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if the check still held it
