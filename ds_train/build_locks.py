"""The lock files of JIT builds of C++/CUDA extensions (DeepSpeed's FusedAdam and CPU ops, ds_train's GELU and loss
kernels), checked at the start of a run, before it builds anything.

torch builds each extension in a folder under its extensions root (TORCH_EXTENSIONS_DIR, else
~/.cache/torch_extensions/<python>_<cuda>/) and holds a file `lock` there while it builds; every other process
that wants the extension waits until the file is gone, silently and without a limit. A process killed in the
build (SIGKILL, the OOM killer: ds_train unwinds on SIGTERM, see distributed.exit_on_stop_signals) leaves the
file, and every later run then waits for ever at its first build.
"""

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


def check_build_locks(say):
    """A lock older than any build: an error naming it (the run would wait on it for ever). A younger one: a
    note, said at once (the run may wait on it next), since either another process is building that extension
    now, and this run waits for it, or one was killed in its build minutes ago."""
    for path, age in build_locks(extensions_root()):
        if age > STALE_AFTER_S:
            raise UserError(f"{path}: a JIT build's lock left {age / 60:.0f} minutes ago by a build that did not "
                            "finish, which torch would wait on for ever; delete it (when no other build is running) "
                            "and run again")
        say(f"note: {path} exists ({age:.0f} s old): another process is building that extension, and this run "
            "waits for it; if none is (one was killed in its build), delete the file")
