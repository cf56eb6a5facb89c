"""The lock files of JIT builds of C++/CUDA extensions (DeepSpeed's FusedAdam and CPU ops, ds_train's GELU and loss
kernels), checked at the start of a run, before it builds anything.

torch builds each extension in a folder under its extensions root (TORCH_EXTENSIONS_DIR, else
~/.cache/torch_extensions/<python>_<cuda>/) with a file `lock` there. Up to torch 2.13 the file's existence is the
lock (torch.utils.file_baton.FileBaton): every other process that wants the extension waits until it is gone,
silently and without a limit, so a process killed in the build (SIGKILL, the OOM killer: ds_train unwinds on
SIGTERM, see distributed.exit_on_stop_signals) leaves it, and every later run then waits for ever at its first
build. From torch 2.14 the builder holds an advisory lock (flock) on the file instead, which the kernel drops when
the holder dies, and the file stays after every build: there only a lock that a process holds now means a wait.
"""

import fcntl
import glob
import os
import time

import torch.utils.cpp_extension

from ds_train.errors import UserError

STALE_AFTER_S = 15 * 60  # a build takes a few minutes at most, on 2 cores too; a lock this old was left


def extensions_root() -> str:
    return os.environ.get("TORCH_EXTENSIONS_DIR") or torch.utils.cpp_extension.get_default_build_root()


def build_locks(root: str) -> list[tuple[str, float]]:
    """(path, age in seconds) of each lock file under root: root/<extension>/lock, or, under torch's default
    root, root/<python>_<cuda>/<extension>/lock."""
    now = time.time()
    found = []
    for path in sorted(glob.glob(os.path.join(root, "*", "lock")) + glob.glob(os.path.join(root, "*", "*", "lock"))):
        try:
            found.append((path, now - os.path.getmtime(path)))
        except FileNotFoundError:  # a build finished between the glob and the stat
            pass
    return found


def torch_waits_on_lock_files() -> bool:
    """Whether this torch's JIT builds take the lock file's existence as the lock (FileBaton, torch <= 2.13), as
    opposed to an flock on it (torch >= 2.14)."""
    return hasattr(torch.utils.cpp_extension, "FileBaton")


def is_held(path: str) -> bool:
    """Whether some process holds an flock on `path` (with torch >= 2.14: builds that extension now)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # gone since the glob (its folder removed), or not ours to read: nothing to say about it
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # let go at once, by the close below
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def check_build_locks(say, files_block: bool | None = None):
    """Where the file itself blocks (`files_block`, by default as this torch does): a lock older than any build is
    an error naming it (the run would wait on it for ever), and a younger one a note, said at once (the run may
    wait on it next), since either another process is building that extension now, and this run waits for it, or
    one was killed in its build minutes ago. Where an flock is the lock: a note for each one held now, and
    nothing about the files that finished builds leave."""
    if files_block is None:
        files_block = torch_waits_on_lock_files()
    for path, age in build_locks(extensions_root()):
        if not files_block:
            if is_held(path):
                say(f"note: {path} is locked: another process is building that extension, and this run waits for it")
            continue
        if age > STALE_AFTER_S:
            raise UserError(f"{path}: a JIT build's lock left {age / 60:.0f} minutes ago by a build that did not "
                            "finish (or by torch 2.14 or newer, whose builds leave it), which this torch would wait on "
                            "for ever; delete it (when no other build is running) and run again")
        say(f"note: {path} exists ({age:.0f} s old): another process is building that extension, and this run "
            "waits for it; if none is (one was killed in its build), delete the file")
