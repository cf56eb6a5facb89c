"""Where this process sits in the job, and the few collectives the trainer needs.

One code path for every launcher: the deepspeed launcher (and torchrun) set RANK / WORLD_SIZE / LOCAL_RANK;
mpirun sets OMPI_* or PMI_* and deepspeed.init_distributed() completes the picture through mpi4py; a plain
`python ds_train/main.py` is a world of one on a free local port.
"""

import functools
import os
import socket
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Place:
    rank: int
    local_rank: int
    world_size: int
    launcher: str  # "env" (deepspeed/torchrun), "mpi" or "single"


@functools.lru_cache(maxsize=1)
def discover() -> Place:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return Place(int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"]), "env")
    if "OMPI_COMM_WORLD_SIZE" in env:  # Open MPI
        return Place(int(env["OMPI_COMM_WORLD_RANK"]), int(env.get("OMPI_COMM_WORLD_LOCAL_RANK", 0)),
                     int(env["OMPI_COMM_WORLD_SIZE"]), "mpi")
    if "PMI_SIZE" in env:  # MPICH, Intel MPI
        return Place(int(env["PMI_RANK"]), int(env.get("MPI_LOCALRANKID", 0)), int(env["PMI_SIZE"]), "mpi")
    return Place(0, 0, 1, "single")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group(place: Place):
    import deepspeed

    if place.launcher == "single":
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if torch.cuda.is_available():
        torch.cuda.set_device(place.local_rank)
    deepspeed.init_distributed(auto_mpi_discovery=place.launcher == "mpi",
                               distributed_port=int(os.environ.get("MASTER_PORT", 29500)))


def shutdown():
    """Leave the process group together; exiting with it alive aborts ranks at interpreter exit."""
    if torch.distributed.is_initialized():
        on_gpu = torch.cuda.is_available()
        torch.distributed.barrier(device_ids=[torch.cuda.current_device()] if on_gpu else None)
        torch.distributed.destroy_process_group()


def print0(*args, **kwargs):
    if discover().rank == 0:
        print(*args, **kwargs, flush=True)


def all_reduce_mean(value: torch.Tensor) -> float:
    """Mean of a scalar over all ranks."""
    value = value.detach().float().clone()
    torch.distributed.all_reduce(value)
    return value.item() / torch.distributed.get_world_size()
