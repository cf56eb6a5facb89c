"""JIT builds' lock files (ds_train/build_locks.py): a run stopped inside a build leaves none behind, and one
found at the start is said at once, or is an error when it is older than any build. The build stopped here is
DeepSpeed's shared-memory all-reduce op, which a CPU run starts in init_distributed when TORCH_EXTENSIONS_DIR
is fresh."""

import glob
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import CPU_CONFIG, MAIN, TINY, child_env
from ds_train import build_locks
from ds_train.errors import UserError

ARGS = [*TINY, "-x", 2, "-v", 2, "-m", 1, "-b", 2, "-d", 64]


def locks(root) -> list:
    return glob.glob(os.path.join(root, "*", "lock"))


def test_sigterm_inside_a_build_ends_the_run_at_once_and_leaves_no_lock(tmp_path):
    """SIGTERM before training began (here: while DeepSpeed builds its shm op, holding its lock) ends the run with
    one line and 143, as a run the signal killed; the build unwinds and removes its lock, where the signal's
    default action, ending the process where it stands, left it for the next run to wait on for ever."""
    root = str(tmp_path / "extensions")
    env = child_env(threads=2)
    env["TORCH_EXTENSIONS_DIR"] = root
    cmd = [sys.executable, MAIN, "--ds_config", CPU_CONFIG, *map(str, ARGS)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not locks(root):
        assert proc.poll() is None, f"the run ended before its build began:\n{proc.communicate()[1][-3000:]}"
        assert time.time() < deadline, "no build lock within 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "ds_train: stopped on SIGTERM before training began: nothing to save"
    assert locks(root) == []


def test_a_young_build_lock_is_a_note_and_an_old_one_an_error(tmp_path, monkeypatch):
    """Under TORCH_EXTENSIONS_DIR (root/<extension>/lock) and torch's default root (root/<python>_<cuda>/...): a
    lock younger than any build (another run building that extension now, or one killed a moment ago) is said,
    since the run may sit on it next; an old one is an error (a real run's: test_cli)."""
    young, old = tmp_path / "fused_adam" / "lock", tmp_path / "py311_cu130" / "ds_train_softmax_grad" / "lock"
    young.parent.mkdir(parents=True)
    young.touch()
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    said = []
    build_locks.check_build_locks(said.append)
    assert len(said) == 1 and re.match(rf"note: {re.escape(str(young))} exists \(\d+ s old\): another process is "
                                       "building that extension", said[0])
    old.parent.mkdir(parents=True)
    old.touch()
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    with pytest.raises(UserError, match=f"^{re.escape(str(old))}: a JIT build's lock left 60 minutes ago"):
        build_locks.check_build_locks(said.append)
