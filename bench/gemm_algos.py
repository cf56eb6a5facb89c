"""Each of the trainer's matmuls against every other algorithm cuBLASLt offers for it, timed at the power cap.

Matmuls are 71-76% of d24's and d48's steps on an H100 (bench/results/h100_2026-12-05_lease10/), and every one
of them runs the algorithm cuBLAS's heuristic picks first: PyTorch's calls do, and so does ds_train's GELU
extension (ds_train/csrc/gelu_matmul.cpp). The heuristic ranks algorithms by a model of their speed at full
clock; in training the H100 runs at its 700 W cap, 1545-1800 MHz, where an algorithm that moves fewer bytes
through L2 and shared memory per product could be the quicker one. So this asks cuBLASLt
(bench/csrc/gemm_algos.cpp) for up to --candidates algorithms for each matmul of a block and of the loss's head
at a model's micro-batch, the same operation with the same epilogue and output type as the trainer's call, and
times each in windows of back-to-back calls of --window_ms (long enough that the GPU sits at its cap, as in a
step), the candidates in turn, --rounds times, beside the trainer's own call (PyTorch's, where there is one, and
PyTorch's with cuBLASLt preferred; for the GELU matmuls, which ds_train's extension makes, the heuristic's first,
#0). A candidate whose result differs from PyTorch's by more than bf16's rounding is left out. Prints per matmul
the medians, the best candidate, its gain over the trainer's call and its kernel, and the GPU's mean power and SM
clock over the matmul's windows (nvidia-smi, sampled every 200 ms).
After each model's rows a `choice` line gives what the trainer could take instead, as environment settings for a
trainer A/B (bench/owed.sh's gemm_ab part): TORCH_BLAS_PREFER_CUBLASLT=1 (torch's own switch to cuBLASLt for every
matmul it makes) where that takes --min_lt_gain off the time of PyTorch's matmuls in a micro-step, with the matmul
time of a micro-step before and after. (The GELU matmuls' other candidates have no switch in the trainer: on an H100
on 2026-12-07 none beat the heuristic's first by 1% at the cap, bench/results/h100_2026-12-07_gemm_algos/.)
    python bench/gemm_algos.py [--models d24 d48] [--candidates 16] [--rounds 3] [--window_ms 100]
"""

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ds_train.model import config_from_descriptor  # noqa: E402

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "gemm_algos.cpp")
MICRO_BATCH = {"d12": 64, "d24": 64, "d48": 16}  # the trainer's B at T=1024 (d48: llm.c's 1558M script's)
HEAD_ROWS, VOCAB = 4096, 50304  # ds_train/loss.py's chunk of rows, GPT-2's padded vocabulary
DEVICE = "cuda"
SETUP_ARGS = ("A", "B", "D", "transa", "transb", "m", "n", "k", "lda", "ldb", "ldd", "epilogue", "bias", "aux")
# cublasLtEpilogue_t values
DEFAULT, BIAS, GELU_AUX_BIAS, DGELU = 1, 4, 164, 192


def extension():
    from torch.utils.cpp_extension import load
    return load(name="bench_gemm_algos", sources=[SOURCE], extra_ldflags=["-lcublasLt"], with_cuda=True)


def rand(*shape, scale=1.0):
    return (torch.randn(*shape, device=DEVICE) * scale).bfloat16()


def matmuls(model):
    """The matmuls of one block and of one head chunk, each as (name, flops, torch_call or None, Lt setup kwargs,
    reference result): the row-major tensors of the trainer's call and the column-major problem they make."""
    C, M = config_from_descriptor(model).n_embd, MICRO_BATCH[model] * 1024
    out = []
    for name, n_out, n_in in (("c_attn", 3 * C, C), ("attn.c_proj", C, C), ("mlp.c_fc", 4 * C, C),
                              ("mlp.c_proj", C, 4 * C)):
        x, w, b = rand(M, n_in), rand(n_out, n_in, scale=0.02), rand(n_out, scale=0.02)
        flops = 2 * M * n_in * n_out
        y = torch.empty(M, n_out, device=DEVICE, dtype=torch.bfloat16)
        if name == "mlp.c_fc":  # the GELU extension's forward: GELU's output and input from one matmul
            pre = torch.empty_like(y)
            ref = F.gelu(F.linear(x, w, b), approximate="tanh")
            out.append((f"{name} forward +GELU", flops, None, dict(A=w, B=x, D=y, transa=True, transb=False, m=n_out,
                        n=M, k=n_in, lda=n_in, ldb=n_in, ldd=n_out, epilogue=GELU_AUX_BIAS, bias=b, aux=pre), ref))
        else:
            out.append((f"{name} forward", flops, lambda x=x, w=w, b=b: F.linear(x, w, b), dict(
                A=w, B=x, D=y, transa=True, transb=False, m=n_out, n=M, k=n_in, lda=n_in, ldb=n_in, ldd=n_out,
                epilogue=BIAS, bias=b, aux=None), F.linear(x, w, b)))
        g = rand(M, n_out)
        gx = torch.empty(M, n_in, device=DEVICE, dtype=torch.bfloat16)
        if name == "mlp.c_proj":  # the GELU extension's backward: times GELU's derivative at its input
            pre = rand(M, n_in)
            ref = torch.ops.aten.gelu_backward(g @ w, pre, approximate="tanh")
            out.append((f"{name} input grad +DGELU", flops, None, dict(A=w, B=g, D=gx, transa=False, transb=False,
                        m=n_in, n=M, k=n_out, lda=n_in, ldb=n_out, ldd=n_in, epilogue=DGELU, bias=None, aux=pre), ref))
        else:
            out.append((f"{name} input grad", flops, lambda g=g, w=w: g @ w, dict(
                A=w, B=g, D=gx, transa=False, transb=False, m=n_in, n=M, k=n_out, lda=n_in, ldb=n_out, ldd=n_in,
                epilogue=DEFAULT, bias=None, aux=None), g @ w))
        acc = torch.zeros(n_out, n_in, device=DEVICE)  # fp32, added into (ds_train/weight_grad.py)
        out.append((f"{name} weight grad", flops,
                    lambda acc=acc, g=g, x=x: torch.addmm(acc, g.t(), x, out_dtype=torch.float32, out=acc),
                    dict(A=x, B=g, D=acc, transa=False, transb=True, m=n_in, n=n_out, k=M, lda=n_in, ldb=n_out,
                         ldd=n_in, epilogue=DEFAULT, bias=None, aux=None), g.t().float() @ x.float()))
    x, w, g = rand(HEAD_ROWS, C), rand(VOCAB, C, scale=0.02), rand(HEAD_ROWS, VOCAB, scale=0.01)
    flops = 2 * HEAD_ROWS * C * VOCAB
    logits = torch.empty(HEAD_ROWS, VOCAB, device=DEVICE, dtype=torch.bfloat16)
    out.append(("head logits", flops, lambda x=x, w=w: x @ w.t(), dict(
        A=w, B=x, D=logits, transa=True, transb=False, m=VOCAB, n=HEAD_ROWS, k=C, lda=C, ldb=C, ldd=VOCAB,
        epilogue=DEFAULT, bias=None, aux=None), x @ w.t()))
    gx = torch.empty(HEAD_ROWS, C, device=DEVICE, dtype=torch.bfloat16)
    out.append(("head input grad", flops, lambda g=g, w=w: g @ w, dict(
        A=w, B=g, D=gx, transa=False, transb=False, m=C, n=HEAD_ROWS, k=VOCAB, lda=C, ldb=VOCAB, ldd=C,
        epilogue=DEFAULT, bias=None, aux=None), g @ w))
    acc = torch.zeros(VOCAB, C, device=DEVICE)
    out.append(("head weight grad", flops,
                lambda acc=acc, g=g, x=x: torch.addmm(acc, g.t(), x, out_dtype=torch.float32, out=acc),
                dict(A=x, B=g, D=acc, transa=False, transb=True, m=C, n=VOCAB, k=HEAD_ROWS, lda=C, ldb=VOCAB, ldd=C,
                     epilogue=DEFAULT, bias=None, aux=None), g.t().float() @ x.float()))
    return out


def calls_per_micro_step(model, name):
    """A block's matmuls run once a layer; the head's once a chunk of rows (ds_train/loss.py)."""
    if name.startswith("head"):
        return MICRO_BATCH[model] * 1024 // HEAD_ROWS
    return config_from_descriptor(model).n_layer


def choices(model, timings, min_lt_gain=0.01):
    """From one model's timings ({matmul: {label: [ms per call, one a round]}}): the environment settings that
    would have the trainer take the quicker calls ({name: value}, empty if none), and the matmul time of a
    micro-step in ms with the trainer's own calls and with those settings."""
    before = lt_before = lt_change = 0.0
    for name, times in timings.items():
        calls = calls_per_micro_step(model, name)
        own = "torch" if "torch" in times else "#0"
        if own not in times:  # the trainer's own algorithm was not among those timed: nothing to weigh against
            continue
        median = {label: statistics.median(t) for label, t in times.items()}
        before += calls * median[own]
        if "torch-lt" in times:
            lt_before += calls * median["torch"]
            lt_change += calls * (median["torch-lt"] - median["torch"])
    if lt_before and lt_change <= -min_lt_gain * lt_before:
        return {"TORCH_BLAS_PREFER_CUBLASLT": "1"}, before, before + lt_change
    return {}, before, before


def choice_line(model, env, before, after):
    """The line bench/owed.sh's gemm_ab part reads a model's settings from (`none` where there are none)."""
    settings = " ".join(f"{name}={value}" for name, value in env.items()) or "none"
    change = f"{100 * (after - before) / before:+.1f}%" if before else "-"
    return f"choice {model}: {settings} | a micro-step's matmuls {before:.1f} -> {after:.1f} ms ({change})"


def window_ms(run, calls):
    """GPU time per call of `calls` back-to-back calls, queued behind a 2 ms GPU sleep so that the host is ahead."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(3_000_000)
    start.record()
    run(calls)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / calls


def kernel_names(run):
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run(1)
        torch.cuda.synchronize()
    return " + ".join(e.name[:70] for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA) or "?"


def repeated(call):
    """run(calls): `calls` calls of `call`, each result dropped as the next is made (as the trainer's are)."""
    def run(calls):
        for _ in range(calls):
            call()
    return run


def with_lt_preferred(call):
    def run(calls):
        before = torch.backends.cuda.preferred_blas_library()
        torch.backends.cuda.preferred_blas_library("cublaslt")
        try:
            for _ in range(calls):
                call()
        finally:
            torch.backends.cuda.preferred_blas_library(before)
    return run


def power_samples(path, since, until):
    """(mean W, mean MHz) of the nvidia-smi samples taken between two time.time() values."""
    watts, mhz = [], []
    with open(path) as f:
        for line in f:
            parts = [p.strip() for p in line.split(",")]
            try:
                when = datetime.datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
                if since <= when <= until:
                    watts.append(float(parts[1]))
                    mhz.append(float(parts[2]))
            except (ValueError, IndexError):
                continue
    return (statistics.mean(watts), statistics.mean(mhz)) if watts else (float("nan"), float("nan"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["d24", "d48"], choices=sorted(MICRO_BATCH))
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window_ms", type=float, default=100.0)
    parser.add_argument("--min_lt_gain", type=float, default=0.01)
    args = parser.parse_args()
    torch.manual_seed(0)
    started = time.time()
    ext = extension()
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | extension built or loaded in "
          f"{time.time() - started:.1f} s | {args.candidates} candidates, {args.rounds} rounds of "
          f"{args.window_ms:.0f} ms windows")
    smi_log = tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False).name
    smi = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,power.draw,clocks.sm", "--format=csv,noheader,nounits",
                            "-lms", "200"], stdout=open(smi_log, "w"), stderr=subprocess.DEVNULL)
    header = (f"{'model':<6}{'matmul':<28}{'torch':>8}{'torch-lt':>9}{'heur.':>8}{'best':>8}{'gain':>7}{'TFLOP/s':>9}"
              f"{'W':>6}{'MHz':>6}  best candidate")
    details = []
    try:
        for model in args.models:
            print(header)
            timings = {}
            for name, flops, torch_call, lt, ref in matmuls(model):
                problem = ext.setup(*(lt[key] for key in SETUP_ARGS), args.candidates)
                entries = {}  # label -> run(calls)
                if torch_call is not None:
                    entries["torch"] = repeated(torch_call)
                    entries["torch-lt"] = with_lt_preferred(torch_call)
                scale = ref.float().abs().max().item()
                for i in range(ext.algo_count(problem)):
                    run = lambda calls, i=i: ext.launch(problem, i, calls)
                    if lt["D"].dtype == torch.float32:
                        lt["D"].zero_()
                    run(1)
                    err = (lt["D"].float() - ref.float()).abs().max().item() / scale
                    if err <= 2e-2:
                        entries[f"#{i}"] = run
                    else:
                        details.append(f"{model} {name} #{i} {ext.describe(problem, i)}: left out, error {err:.2e}")
                if not any(label.startswith("#") for label in entries):
                    print(f"{model:<6}{name:<28}no candidate gave the trainer's result (the details below)")
                    continue
                first = next(label for label in ("torch", "#0", *entries) if label in entries)  # the trainer's
                calls = max(3, min(3000, int(args.window_ms / window_ms(entries[first], 3))))
                window_ms(entries[first], calls * 3)  # to the power cap
                since = time.time()
                times = {label: [] for label in entries}
                labels = list(entries)
                for r in range(args.rounds):  # each round starts one later, so that drift falls on all alike
                    for label in labels[r % len(labels):] + labels[:r % len(labels)]:
                        times[label].append(window_ms(entries[label], calls))
                watts, mhz = power_samples(smi_log, since, time.time())
                timings[name] = times
                median = {label: statistics.median(t) for label, t in times.items()}
                alternatives = [label for label in median if label.startswith("#")]
                best = min(alternatives, key=median.get)
                base = median[first]
                for label in entries:
                    config = ext.describe(problem, int(label[1:])) if label.startswith("#") else ""
                    details.append(f"{model} {name} {label} {config}: " + " ".join(f"{t:.4f}" for t in times[label])
                                   + f" ms, median {median[label]:.4f}")
                details.append(f"{model} {name} kernels: {first}: {kernel_names(entries[first])} | {best}: "
                               f"{kernel_names(entries[best])}")
                fmt = lambda label: f"{median[label]:.4f}" if label in median else "-"
                print(f"{model:<6}{name:<28}{fmt('torch'):>8}{fmt('torch-lt'):>9}{fmt('#0'):>8}{median[best]:>8.4f}"
                      f"{100 * (base - median[best]) / base:>6.1f}%{flops / median[best] / 1e9:>9.0f}{watts:>6.0f}"
                      f"{mhz:>6.0f}  {best} {ext.describe(problem, int(best[1:]))} of {len(alternatives)}", flush=True)
            print(choice_line(model, *choices(model, timings, args.min_lt_gain)) + "\n", flush=True)
            ext.clear()
            torch.cuda.empty_cache()
    finally:
        smi.terminate()
    print("\nevery timing (ms per call, one window a round) and the kernels:")
    print("\n".join(details))


if __name__ == "__main__":
    main()
