"""What kind of machine a benchmark ran on, beyond the GPU's name: lent machines of one kind ran the same code up to
3.6% apart (docs/performance.md, 2026-12-04), and ds_train queues its kernels from Python, so the host's speed is
part of the step's. Prints one line per fact, `name: value`, for the results folder:

    python bench/host_probe.py > $OUT/host.txt

- the CPU's model and core count, Python's and torch's versions;
- python_loop_s: 10^6 Python integer adds in a loop (the best of 5), the interpreter's speed;
- torch_cpu_op_us: one small in-place torch op on the CPU (the best of 3 runs of 10^5), the dispatcher's cost;
- with a GPU, its name, driver, power limit and SM clock limit (nvidia-smi), and cuda_launch_us: one tiny kernel
  launch as the host queues it (10^4 in a row, the best of 3, synchronized only at the end): the rate at which
  this host can feed the GPU small kernels.
"""

import os
import platform
import shutil
import subprocess
import timeit

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def python_loop_s() -> float:
    return min(timeit.repeat("s = 0\nfor i in range(1_000_000): s += i", number=1, repeat=5))


def torch_cpu_op_us() -> float:
    x = torch.ones(8)
    return min(timeit.repeat(lambda: x.add_(1), number=100_000, repeat=3)) / 100_000 * 1e6


def cuda_launch_us() -> float:
    x = torch.ones(8, device="cuda")
    x.add_(1)
    torch.cuda.synchronize()

    def launches():
        for _ in range(10_000):
            x.add_(1)
        torch.cuda.synchronize()
    return min(timeit.repeat(launches, number=1, repeat=3)) / 10_000 * 1e6


def nvidia_smi() -> str:
    if not shutil.which("nvidia-smi"):
        return ""
    query = "name,driver_version,power.limit,clocks.max.sm"
    out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                         text=True)
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""


def main():
    print(f"cpu: {cpu_model()}")
    print(f"cpu_cores: {os.cpu_count()}")
    print(f"python: {platform.python_version()}")
    print(f"torch: {torch.__version__}")
    print(f"python_loop_s: {python_loop_s():.4f}")
    print(f"torch_cpu_op_us: {torch_cpu_op_us():.3f}")
    if torch.cuda.is_available():
        print(f"gpu: {nvidia_smi() or torch.cuda.get_device_name()}")
        print(f"cuda_launch_us: {cuda_launch_us():.3f}")


if __name__ == "__main__":
    main()
