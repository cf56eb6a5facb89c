"""CPU runs: glibc's malloc told to keep the memory a process frees for its next allocations.

By default glibc serves each block above its mmap threshold (128 KiB, rising to at most 32 MiB) with a fresh
mmap and unmaps it when freed, so most large tensors of a CPU step are new memory, paid for with a page fault per
4 KiB page as they are first written. A CPU step allocates many: one chunk of the quickstart's head logits is
512 x 50257 floats, 103 MB. With big blocks taken from the heap (M_MMAP_MAX 0) and the heap never trimmed
(M_TRIM_THRESHOLD at its largest) a step mostly reuses what the steps before it freed, as the CUDA caching
allocator does on a GPU: the quickstart's steps fault in 18 MiB of new pages each instead of 535 MiB, and take 289 ms
instead of 519 (this project's 2-core machine; two ranks' steps a quarter to a third less: README). Not all: torch
asks for 64-byte aligned blocks, which a freed block of the same size cannot always serve. The price: the process
keeps about its peak memory resident, and that peak is higher (the quickstart's model: 1.0-1.6 GB a process against
0.75-0.77).

GPU runs keep glibc's defaults, and so does a process whose environment tunes glibc's malloc itself.
"""

import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's <malloc.h>
LARGEST_INT = 2**31 - 1  # mallopt takes an int


def user_tunes_malloc() -> bool:
    return ("glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")
            or any(k.startswith("MALLOC_") and k.endswith("_") for k in os.environ))


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory for reuse (above); False where this is not glibc or where the
    environment tunes malloc itself (MALLOC_*_ or glibc.malloc tunables: the user's setting stands)."""
    if platform.libc_ver()[0] != "glibc" or user_tunes_malloc():
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, LARGEST_INT))
