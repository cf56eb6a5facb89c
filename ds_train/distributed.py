"""Where this process sits in the job, and the few collectives the trainer needs.

One code path for every launcher: the deepspeed launcher (and torchrun) set RANK / WORLD_SIZE / LOCAL_RANK;
mpirun sets OMPI_* or PMI_* and deepspeed.init_distributed() completes the picture through mpi4py; a plain
`python ds_train/main.py` is a world of one on a free local port.
"""

import contextlib
import functools
import os
import random
import signal
import socket
import sys
import threading
import warnings
from dataclasses import dataclass

import torch

from ds_train.errors import UserError


@dataclass(frozen=True)
class Place:
    rank: int
    local_rank: int
    world_size: int
    launcher: str  # "env" (deepspeed/torchrun), "mpi" or "single"
    local_world_size: int = None  # the ranks on this node, where the launcher says


def _first_int(*names):
    env = os.environ
    return next((int(env[name]) for name in names if env.get(name, "").isdigit()), None)


@functools.lru_cache(maxsize=1)
def discover() -> Place:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun says LOCAL_WORLD_SIZE, the deepspeed launcher LOCAL_SIZE
        return Place(int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"]), "env",
                     _first_int("LOCAL_WORLD_SIZE", "LOCAL_SIZE"))
    if "OMPI_COMM_WORLD_SIZE" in env:  # Open MPI
        return Place(int(env["OMPI_COMM_WORLD_RANK"]), int(env.get("OMPI_COMM_WORLD_LOCAL_RANK", 0)),
                     int(env["OMPI_COMM_WORLD_SIZE"]), "mpi", _first_int("OMPI_COMM_WORLD_LOCAL_SIZE"))
    if "PMI_SIZE" in env:  # MPICH and Intel MPI (hydra), Cray's PALS
        return Place(int(env["PMI_RANK"]), _first_int("MPI_LOCALRANKID", "PALS_LOCAL_RANKID") or 0, int(env["PMI_SIZE"]),
                     "mpi", _first_int("MPI_LOCALNRANKS", "PALS_LOCAL_SIZE"))
    return Place(0, 0, 1, "single", 1)


def check_accelerator_env():
    """DS_ACCELERATOR is DeepSpeed's choice of accelerator; ds_train runs on a CUDA GPU or the CPU (where
    DS_ACCELERATOR=cpu keeps it on a GPU machine: ds_train/main.py hides the GPUs then)."""
    name = os.environ.get("DS_ACCELERATOR")
    if name not in (None, "cpu", "cuda"):
        raise UserError(f"DS_ACCELERATOR={name}: ds_train runs on cuda or cpu; set one of them, or unset it to take "
                        "the GPU where torch sees one")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("DS_ACCELERATOR=cuda: torch sees no CUDA GPU here; unset it, or set cpu")


def _lowest_ephemeral_port() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


# the OS's randomness, drawn at each call: a seeded global random would make processes pick alike, and so would
# a generator seeded once at import in processes forked from one parent (the tests' zygote)
_port_choice = random.SystemRandom()


def free_port() -> int:
    """A port free now, for a MASTER_PORT, from below the kernel's ephemeral range: one the kernel hands out (bind
    to 0) may be handed out again to another process before rank 0 listens on it (minutes later, when DeepSpeed
    builds its CPU op first; mpirun's own listener took one in the tests, and the job hung)."""
    below = max(_lowest_ephemeral_port(), 10001)
    for _ in range(1000):
        port = _port_choice.randrange(10000, below)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port below the ephemeral range")


def init_process_group(place: Place):
    import deepspeed

    if place.launcher == "single":
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    if torch.cuda.is_available():
        torch.cuda.set_device(place.local_rank)
        # DeepSpeed binds the process group to a GPU only when there are several ranks; with one, every barrier
        # (a checkpoint's, ZeRO-3's) has torch warn in the step log that it uses "the device under current
        # context", which is the one just set
        warnings.filterwarnings("ignore", message=r"barrier\(\): using the device under current context")
    rendezvous = torch.distributed.init_process_group

    @functools.wraps(rendezvous)  # DeepSpeed reads its signature (device_id); wraps hands it the original's
    def stoppable_rendezvous(*args, **kwargs):
        with _signals_end_the_wait():
            return rendezvous(*args, **kwargs)

    # DeepSpeed first builds or loads its CPU op (a build a signal must unwind, for its lock file), then meets the
    # other ranks in torch's init_process_group, which it calls through the module: only that call is wrapped
    torch.distributed.init_process_group = stoppable_rendezvous
    try:
        deepspeed.init_distributed(auto_mpi_discovery=place.launcher == "mpi",
                                   distributed_port=int(os.environ.get("MASTER_PORT", 29500)))
    except torch.distributed.DistError as e:
        raise _rendezvous_error(e, place) from None
    finally:
        torch.distributed.init_process_group = rendezvous
    release_shm_buffer(place.rank)


@contextlib.contextmanager
def _signals_end_the_wait():
    """While the ranks meet, torch holds this thread in C++ for up to DEEPSPEED_TIMEOUT (10 minutes by default), and
    Python runs a signal's handler only when it returns: a SIGTERM or a Ctrl-C to a rank whose peers never came
    waited out the whole timeout. torch lets go of the GIL while it waits, so a thread that the signal wakes
    (signal.set_wakeup_fd: Python's C handler writes the signal's number there at once) ends the process, with one
    line. Nothing is being built or written meanwhile, so there is nothing to unwind."""
    stop_signals = {int(sig) for sig in _stop_signals()}
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # as set_wakeup_fd requires
    where = _meeting_place()

    def watch():
        while numbers := os.read(read_fd, 16):  # empty once write_fd is closed, after the wait
            for signum in numbers:
                if signum in stop_signals:
                    name = signal.Signals(signum).name
                    os.write(sys.stderr.fileno(), rank_prefixed(f"ds_train: stopped on {name} while waiting for "
                                                                f"the ranks to meet at {where}: nothing to save").encode())
                    os._exit(128 + signum)  # as the shell reports a process the signal ended

    previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    watcher = threading.Thread(target=watch, name="ds_train rendezvous signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous)
        os.close(write_fd)
        watcher.join()
        os.close(read_fd)


def _meeting_place() -> str:
    """Where the ranks meet (rank 0's store), as the rendezvous's messages name it."""
    return f"MASTER_ADDR {os.environ.get('MASTER_ADDR')}, MASTER_PORT {os.environ.get('MASTER_PORT')}"


def rank_prefixed(line: str) -> str:
    """A line for stderr as ds_train writes them: prefixed with the rank on ranks other than 0, and ended."""
    rank = discover().rank
    return f"{f'[rank {rank}] ' if rank else ''}{line}\n"


def _rendezvous_error(error: "torch.distributed.DistError", place: Place) -> Exception:
    """The ranks meet at rank 0's TCP store on MASTER_ADDR:MASTER_PORT; where they cannot, torch raises from deep
    inside its rendezvous. -> a UserError saying which of the ways it failed, or `error` itself for any other."""
    from deepspeed.constants import default_pg_timeout  # DEEPSPEED_TIMEOUT minutes, 10 by default

    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    where = _meeting_place()
    wait = f"DEEPSPEED_TIMEOUT sets how long the ranks wait ({default_pg_timeout.total_seconds() / 60:g} min here)"
    said = str(error).splitlines()[0] if str(error) else type(error).__name__
    if "EADDRINUSE" in str(error):  # rank 0's store could not listen
        return UserError(f"MASTER_PORT {port}: the port is in use on rank 0's machine ({addr}), so the ranks cannot "
                         "meet there; pick a free one (deepspeed --master_port, or MASTER_PORT)")
    if isinstance(error, torch.distributed.DistNetworkError):  # this rank never reached the store
        if place.rank == 0:  # rank 0 runs the store on this machine and connects to it as the others do
            return UserError(f"{where}: rank 0 could not reach its own store there ({said}); rank 0 listens on "
                             f"this machine, so MASTER_ADDR must be an address of this machine. {wait}")
        return UserError(f"{where}: rank {place.rank} could not reach rank 0 there ({said}); is rank 0 running, "
                         f"and is MASTER_ADDR its address as this machine sees it? {wait}")
    if isinstance(error, torch.distributed.DistStoreError):  # the store was reached, but not by every rank
        return UserError(f"{where}: not all {place.world_size} ranks joined ({said}); start every node's ranks, all "
                         f"with the same master address and port. {wait}")
    return error


def release_shm_buffer(rank: int):
    """Unlink this rank's /dev/shm all-reduce buffer that DeepSpeed's CPU backend creates and never removes.

    Each CPU run leaves world_size buffers of ~70 MB in /dev/shm (RAM) otherwise; a few hundred runs fill
    the machine's memory. Once every rank has mapped its peers' buffers (the barrier), the names are no
    longer needed: the mappings stay valid until the processes exit, and then the memory is freed.
    """
    if torch.cuda.is_available():
        return
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    path = f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}"
    torch.distributed.barrier()
    if os.path.exists(path):
        os.unlink(path)


def shutdown():
    """Leave the process group together; exiting with it alive aborts ranks at interpreter exit."""
    if torch.distributed.is_initialized():
        on_gpu = torch.cuda.is_available()
        torch.distributed.barrier(device_ids=[torch.cuda.current_device()] if on_gpu else None)
        torch.distributed.destroy_process_group()


class Terminated(BaseException):
    """SIGTERM, SIGUSR1 or Ctrl-C (SIGINT) before training began. A BaseException, as KeyboardInterrupt is, so that
    no `except Exception` on the way (a kernel's build probe, say) takes it for a failure and goes on."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop_signals() -> list:
    """SIGTERM, SIGUSR1, and SIGINT unless this process was started with it ignored (a shell's background job:
    a Ctrl-C meant for the shell's foreground must not stop it)."""
    return [signal.SIGTERM, signal.SIGUSR1] + ([signal.SIGINT] if signal.getsignal(signal.SIGINT) != signal.SIG_IGN
                                               else [])


_stop_before_training = None  # the first stop signal's number, kept in case its Terminated went unseen (below)


def exit_on_stop_signals():
    """Until StopSignal takes over at the first step: SIGTERM, SIGUSR1 and Ctrl-C raise Terminated, and main()
    exits at once with one line (nothing has been trained, so nothing is lost). By default SIGTERM and SIGUSR1 end
    the process where it stands, and in a first run on a machine that is often inside a JIT build (DeepSpeed's
    FusedAdam, ds_train's kernels: a minute or two), whose lock file would stay behind for every later build of it
    to wait on for ever; raising lets the build's own cleanup remove it."""
    def handle(signum, frame):
        global _stop_before_training
        _stop_before_training = _stop_before_training or signum
        raise Terminated(signum)

    def raise_again_outside_finalizers(unraisable, python_s_own=sys.unraisablehook):
        # the handler ran inside a finalizer (a subprocess' Popen collected during a JIT build), and Python prints
        # an exception raised there and goes on: the signal again, from another thread a moment later, so that the
        # handler runs once this hook has returned, where its Terminated ends the run
        if isinstance(unraisable.exc_value, Terminated):
            resend = threading.Timer(0.05, os.kill, (os.getpid(), unraisable.exc_value.signum))
            resend.daemon = True
            resend.start()
        else:
            python_s_own(unraisable)

    sys.unraisablehook = raise_again_outside_finalizers
    for sig in _stop_signals():
        signal.signal(sig, handle)


class StopSignal:
    """SIGTERM or SIGUSR1 (preemption, SLURM's time limit, the deepspeed launcher passing on a Ctrl-C) or a Ctrl-C
    (SIGINT) asks the run to stop at the next step boundary, with a checkpoint where the run has -o; a second
    Ctrl-C quits at once (KeyboardInterrupt, which main() says in one line). The signal may reach only some ranks,
    so every rank asks the others each step and all stop at the same step."""

    def __init__(self):
        if _stop_before_training is not None:  # a stop signal before training whose Terminated went unseen all the same
            raise Terminated(_stop_before_training)
        self.name = None  # the first signal's
        self.interrupted = False
        for sig in _stop_signals():
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if signum == signal.SIGINT:
            if self.interrupted:
                raise KeyboardInterrupt
            self.interrupted = True
            if discover().rank == 0:  # os.write, not print: this may run in the middle of a print to stdout
                os.write(sys.stderr.fileno(), b"Ctrl-C: stopping at the next step boundary (with a checkpoint where "
                                              b"the run has -o); Ctrl-C again to quit at once\n")
        # a terminal's Ctrl-C reaches the deepspeed launcher too, which then sends SIGTERM: the first one names it
        self.name = self.name or signal.Signals(signum).name

    def requested(self) -> bool:
        device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
        flag = torch.tensor([self.name is not None], dtype=torch.int32, device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() and self.name is None:
            self.name = "a signal to another rank"
        return bool(flag.item())


def print0(*args, **kwargs):
    if discover().rank == 0:
        print(*args, **kwargs, flush=True)


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a scalar over all ranks, left on the device: reading it waits for the GPU, so the caller reads
    it where it has to wait anyway."""
    value = value.detach().float().clone()
    torch.distributed.all_reduce(value)
    return value / torch.distributed.get_world_size()


def all_gather_values(values: list, device) -> list:
    """Every rank's list of numbers, in rank order (the lists must have the same length on all ranks)."""
    mine = torch.tensor(values, dtype=torch.float64, device=device)
    gathered = [torch.zeros_like(mine) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(gathered, mine)
    return [t.tolist() for t in gathered]
