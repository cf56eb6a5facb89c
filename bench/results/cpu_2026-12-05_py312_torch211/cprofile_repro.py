"""cProfile and torch's pybind11 methods, with and without C calls profiled (see NOTES.md).

    python cprofile_repro.py PORT

`outer` calls `ws` three times; `ws` calls ProcessGroup.size() (a pybind11 method, as inside every
torch.distributed.get_world_size) and sleeps 5 ms. A sound profile counts outer once and ws three times.
"""
import cProfile
import os
import pstats
import sys
import time

import torch
import torch.distributed as dist

os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
dist.init_process_group("gloo", rank=0, world_size=1)
group = dist.distributed_c10d._get_default_group()


def ws():
    group.size()
    time.sleep(0.005)


def outer():
    for _ in range(3):
        ws()


for builtins in (True, False):
    profiler = cProfile.Profile(builtins=builtins)
    profiler.runcall(outer)
    calls = {name: (stat[1], round(stat[3] * 1000, 1)) for (file, _, name), stat in pstats.Stats(profiler).stats.items()
             if file == __file__ and name in ("outer", "ws")}
    print(f"Python {sys.version.split()[0]}, torch {torch.__version__}, builtins={builtins}: "
          f"(calls, cumulative ms) {dict(sorted(calls.items()))}")
dist.destroy_process_group()
