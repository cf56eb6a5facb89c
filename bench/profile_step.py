"""Where one optimizer step of the trainer spends its GPU time: the engine as main.py builds it (DeepSpeed,
ZeRO, --compile), a few warm-up steps, then one step under torch.profiler, its CUDA kernels grouped by kind.

    python bench/profile_step.py --ds_config ds_configs/gpt2_124M.json -e d12 -b 64 -t 1024 -d 524288 -z 1 \
        -i "/tmp/bench_data/random_train_*.bin" -j "/tmp/bench_data/random_val_*.bin"

Takes main.py's flags; one GPU, one process. Prints the step time, GPU busy time, a table by kind of kernel
(matmul, attention, compiled Triton, optimizer, copies, other) and the top kernels, the GPU's idle gaps and the
CPU's waits for the GPU by trainer phase, and the host's busy time by phase and by operator.

With --python_profile N it runs the profiled step under cProfile instead and prints the N functions of DeepSpeed
(its engine's entry points left out) with the most cumulative time in it: where DeepSpeed's Python goes, e.g.
ZeRO-3's hooks. On a CPU with a narrow model (little compute) the step time is then mostly host work:
    python bench/profile_step.py --ds_config ds_configs/gpt2_124M.json -e gpt2:d12:c64:h2 -b 1 -t 64 -d 512 \
        --compile 1 -z 3 --python_profile 12
"""

import argparse
import cProfile
import os
import pstats
import re
import sys
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from ds_train import config, distributed  # noqa: E402
from ds_train.data import ShardLoader  # noqa: E402
from ds_train.main import build_engine, settle_kernels  # noqa: E402
from ds_train.outliers import UpdateGuard  # noqa: E402
from ds_train.update import NormHook, train_step  # noqa: E402

KINDS = [  # (kind, pattern on the kernel name), first match wins
    ("attention", r"flash|fmha|sdpa|attention|cudnn"),
    ("matmul", r"gemm|nvjet|cutlass|sm90_xmma|cublas|matmul"),
    ("optimizer", r"multi_tensor|adam|Adam"),
    ("compiled (Triton)", r"^triton_"),
    ("copy / cast", r"copy|Copy|cast|to_copy|CatArray|memcpy|Memcpy|memset|Memset"),
    ("reduction / norm", r"reduce|norm|Norm|softmax|Softmax"),
]


def kind_of(name: str) -> str:
    return next((kind for kind, pattern in KINDS if re.search(pattern, name)), "other")


def main():
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--python_profile", type=int, default=0, metavar="N")
    own, rest = own.parse_known_args(sys.argv[1:])
    args = config.parse_args(rest)
    place = distributed.discover()
    cuda = torch.cuda.is_available()  # a CPU run checks the script itself (its table then holds CPU ops only)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    run, ds_config, notes = config.resolve(args, place.world_size, has_gpu=cuda)
    run = settle_kernels(args, run, notes)  # as main.py: -fa and -ge back to 0 where their kernels cannot run
    for note in notes:
        print(f"note: {note}")
    distributed.init_process_group(place)
    engine = build_engine(run, ds_config)
    loader = ShardLoader(run.train_data, run.B, run.T, place.rank, place.world_size, run.shuffle)
    guard, hook = UpdateGuard(0, 0), NormHook(engine) if run.zero_stage > 0 else None  # as main.py

    def step():
        return train_step(engine, loader, run.grad_accum, 1e-4, guard, hook)

    for _ in range(3):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(TIMED_STEPS):
        step()
    sync()
    step_ms = (time.perf_counter() - start) / TIMED_STEPS * 1000

    print(f"{torch.cuda.get_device_name() if cuda else 'cpu'} | {run.init} B={run.B} T={run.T} accum={run.grad_accum} "
          f"ZeRO-{run.zero_stage} -r {run.recompute} compile={int(run.compile)}")
    if own.python_profile:
        print(f"step {step_ms:.1f} ms (mean of {TIMED_STEPS})")
        print_python_profile(step, sync, own.python_profile)
        distributed.shutdown()
        return
    from torch.profiler import ProfilerActivity, profile
    label_phases(engine, loader)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        sync()
    by_kind, by_name = defaultdict(float), defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if event.device_type == (torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU) and \
                not event.name.startswith("phase: "):  # a phase label's GPU-side span is not a kernel
            ms = (event.device_time_total if cuda else event.self_cpu_time_total) / 1000
            by_kind[kind_of(event.name)] += ms
            by_name[event.name][0] += ms
            by_name[event.name][1] += 1
    busy = sum(by_kind.values())
    tokens = run.total_batch_size
    print(f"step {step_ms:.1f} ms ({tokens / step_ms * 1000:,.0f} tok/s, mean of {TIMED_STEPS}) | kernels (CPU: ops) in the profiled step "
          f"{busy:.1f} ms | peak memory {torch.cuda.max_memory_allocated() / 2**30 if cuda else 0:.2f} GiB")
    print(f"{'kind':<20} {'ms':>9} {'share':>6}")
    for kind, ms in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"{kind:<20} {ms:>9.1f} {100 * ms / busy:>5.1f}%")
    print(f"\n{'top kernels':<90} {'ms':>8} {'calls':>6}")
    for name, (ms, calls) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:30]:
        print(f"{name[:90]:<90} {ms:>8.1f} {calls:>6}")
    if cuda:  # the same GPU time by the operator that launched it (compiled graphs' Triton kernels included)
        print(f"\n{'top operators (GPU time of the kernels each launched itself)':<90} {'ms':>8} {'calls':>6}")
        ops = sorted((e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CPU),
                     key=lambda e: -e.self_device_time_total)[:20]
        for op in ops:
            print(f"{op.key[:90]:<90} {op.self_device_time_total / 1000:>8.1f} {op.count:>6}")
    if cuda:
        print_idle(prof.events())
        print_host_waits(prof.events())
    print_host_time(prof.events(), prof.key_averages())
    distributed.shutdown()


TIMED_STEPS = 5
PHASES = ("forward", "backward", "step", "next_batch")


def label_phases(engine, loader):
    """Name the trainer's phases in the profile (record_function around the engine's and loader's calls)."""
    from torch.profiler import record_function

    def labelled(name, fn):
        def call(*args, **kwargs):
            with record_function(f"phase: {name}"):
                return fn(*args, **kwargs)
        return call
    for name in PHASES:
        owner = loader if name == "next_batch" else engine
        setattr(owner, name, labelled(name, getattr(owner, name)))


def around(events, t):
    """The innermost of `events` running at time t (µs), or None."""
    running = [e for e in events if e.time_range.start <= t <= e.time_range.end]
    return min(running, key=lambda e: e.time_range.end - e.time_range.start) if running else None


def phase_at(phases, t) -> str:
    """The trainer phase (label_phases) running at time t, or "outside"."""
    phase = around(phases, t)
    return phase.name[len("phase: "):] if phase else "outside"


def print_idle(events):
    """Where the GPU waits for the CPU: gaps between kernels, charged to the trainer phase (and innermost CPU
    op) that was running when the next kernel was launched."""
    kernels = sorted((e.time_range.start, e.time_range.end) for e in events
                     if e.device_type == torch.autograd.DeviceType.CUDA and not e.name.startswith("phase: "))
    cpu = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    phases = [e for e in cpu if e.name.startswith("phase: ")]
    ops = [e for e in cpu if not e.name.startswith("phase: ")]
    gaps, busy_until = [], kernels[0][1]
    for start, end in kernels[1:]:
        if start > busy_until + 1:  # µs
            gaps.append((busy_until, start))
        busy_until = max(busy_until, end)
    by_phase = defaultdict(float)
    described = []
    for start, end in gaps:
        phase = phase_at(phases, end - 5)
        by_phase[phase] += (end - start) / 1000
        described.append((end - start, phase, start))
    total = sum(by_phase.values())
    print(f"\nGPU idle between kernels: {total:.1f} ms in {len(gaps)} gaps over {(busy_until - kernels[0][0]) / 1000:.1f} ms; "
          "by the phase launching the next kernel: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(by_phase.items(), key=lambda kv: -kv[1])))
    for length, phase, start in sorted(described, key=lambda d: -d[0])[:8]:
        op = around(ops, start + length - 5)
        print(f"  {length / 1000:7.2f} ms at +{(start - kernels[0][0]) / 1000:7.1f} ms  phase: {phase}  "
              f"(CPU in {op.name if op else '-'})")


HOST_WAITS = re.compile(r"^cuda(StreamSynchronize|EventSynchronize|DeviceSynchronize|Memcpy)$")
QUEUE_FULL = "Command Buffer Full"  # a launch blocked because the GPU's queue was full: the CPU was ahead


def is_host_wait(name: str) -> bool:
    """Whether a CPU event is the host waiting for the GPU: a synchronization or a launch held on a full queue."""
    return bool(HOST_WAITS.match(name)) or name == QUEUE_FULL


def print_host_waits(events):
    """Where the CPU waits for the GPU (stream, event and device synchronizations, synchronous copies), by
    trainer phase. After a long wait the GPU's queue is empty and it idles until the CPU queues the next kernel;
    gaps without waits mean the CPU queues kernels more slowly than the GPU runs them."""
    cpu = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    phases = [e for e in cpu if e.name.startswith("phase: ")]
    by_call = defaultdict(lambda: [0.0, 0])
    for wait in (e for e in cpu if HOST_WAITS.match(e.name)):
        call = by_call[(wait.name, phase_at(phases, wait.time_range.start))]
        call[0] += wait.time_range.elapsed_us() / 1000
        call[1] += 1
    total = sum(ms for ms, _ in by_call.values())
    print(f"\nCPU waiting for the GPU: {total:.1f} ms in {sum(n for _, n in by_call.values())} calls; by call and phase: "
          + ", ".join(f"{name} in {phase} {ms:.2f} ms ({n}x)"
                      for (name, phase), (ms, n) in sorted(by_call.items(), key=lambda kv: -kv[1][0])))


def print_host_time(events, op_averages):
    """How much of the step the host spends queueing work, by trainer phase, and which operators take its time:
    with the CPU busy for most of the step, a slower host (or more Python per kernel) makes the GPU wait. Waits
    are the synchronizations above and launches blocked on a full queue; busy is the rest of each phase's time."""
    cpu = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    if not cpu:
        return
    phases = [e for e in cpu if e.name.startswith("phase: ")]
    waits = [e for e in cpu if is_host_wait(e.name)]
    span = (max(e.time_range.end for e in cpu) - min(e.time_range.start for e in cpu)) / 1000
    wall, waited_in = defaultdict(float), defaultdict(float)
    for phase in phases:
        wall[phase.name[len("phase: "):]] += phase.time_range.elapsed_us() / 1000
    wall["outside"] = span - sum(wall.values())
    for wait in waits:
        waited_in[phase_at(phases, wait.time_range.start)] += wait.time_range.elapsed_us() / 1000
    waited = sum(waited_in.values())
    queue_full = sum(w.time_range.elapsed_us() for w in waits if w.name == QUEUE_FULL) / 1000
    busy = {name: ms - waited_in[name] for name, ms in wall.items()}
    print(f"\nhost: {span:.1f} ms from the profiled step's first CPU operator to its last; waiting for the GPU "
          f"{waited:.1f} ms ({queue_full:.1f} of it on a full launch queue), busy {span - waited:.1f} ms "
          f"({100 * (span - waited) / span:.0f}%); busy / wall by phase: "
          + ", ".join(f"{n} {busy[n]:.1f} / {wall[n]:.1f}" for n in sorted(wall, key=lambda n: -wall[n])))
    print(f"{'host time by operator (self CPU time)':<90} {'ms':>8} {'calls':>6}")
    mine = sorted((e for e in op_averages if not is_host_wait(e.key) and not e.key.startswith("phase: ")),
                  key=lambda e: -e.self_cpu_time_total)[:15]
    for op in mine:
        print(f"{op.key[:90]:<90} {op.self_cpu_time_total / 1000:>8.1f} {op.count:>6}")


WRAPPERS = ("engine.py", "nvtx.py")  # DeepSpeed's engine.forward/backward/step and its timing decorator


def print_python_profile(step, sync, top: int):
    """One step under cProfile: its time there (cProfile's own overhead included) and DeepSpeed's `top` functions
    by cumulative time, each with its calls in the step; its engine's entry points are left out (they hold it all)."""
    # builtins=False: only Python functions are listed here anyway, and on Python 3.12.0-3.12.4 (the GPU machine had
    # 3.12.3) cProfile lost the return of a C function called as a bound method, as torch's pybind11 bindings are
    # (ProcessGroup.size, say), and from there charged calls to the wrong callers and left whole ones out (CPython
    # fixed it in 3.12.5); not profiling C calls at all keeps the stack right there
    profiler = cProfile.Profile(builtins=False)
    start = time.perf_counter()
    profiler.enable()
    step()
    sync()
    profiler.disable()
    print(f"one step under cProfile: {(time.perf_counter() - start) * 1000:.1f} ms")
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (primitive calls, calls, self, cumulative, callers)
    mine = [(cumulative, calls, f"{os.path.basename(file)}:{name}")
            for (file, _, name), (_, calls, _, cumulative, _) in stats.items()
            if f"{os.sep}deepspeed{os.sep}" in file and os.path.basename(file) not in WRAPPERS]
    print(f"{'DeepSpeed function (cumulative time in the step)':<70} {'ms':>8} {'calls':>6}")
    for cumulative, calls, name in sorted(mine, reverse=True)[:top]:
        print(f"{name[:70]:<70} {cumulative * 1000:>8.1f} {calls:>6}")


if __name__ == "__main__":
    main()
