"""Summarize ds_train console logs: ms/step, tokens/s and MFU over a window of steps.

    python bench/summarize.py LOG [LOG ...] [--first 11] [--last 30]

tokens/s = tokens per step (the table's "total batch size") / mean step time over steps first..last;
MFU = tokens/s * flops_per_token / 989e12 (H100 SXM dense bf16), flops_per_token as llm.c counts it:
6 * num_parameters + 6 * L * C * T, read from the log's table. The console's own columns are shown too:
the mean of its per-step MFU over the same window, and its tok/s (llm.c's EMA) at the last step.
"""

import argparse
import os
import re
import statistics

PEAK = 989e12
STEP = re.compile(r"^step\s+(\d+)/(\d+) \| loss (\S+) \| norm (\S+) \| lr (\S+) \| (\S+) ms"
                  r"(?: \| (\S+)% bf16 MFU)? \| (\d+) tok/s")
ROW = re.compile(r"^\| (.+?)\s+\| (.+?)\s+\|$")
TOTAL = re.compile(r"total average iteration time: (?:(\S+) ms|n/a \([^)]*\))(?: \| peak memory (\S+) GiB)?")
ESTIMATE = re.compile(r"^memory per GPU \(estimate.* total (\S+) GiB")  # --dry_run's, when the log has it
HOST = re.compile(r"^host peak RSS (\S+) GiB")  # bench/memory.sh's


def parse(path):
    rows, steps, total, extra = {}, [], None, {}
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            for key, pattern in (("estimate_gib", ESTIMATE), ("host_gib", HOST)):
                if m := pattern.match(line):
                    extra[key] = float(m.group(1))
            if "out of memory" in line:
                extra["oom"] = True
            if m := ROW.match(line):
                rows.setdefault(m.group(1), m.group(2))
            elif m := STEP.match(line):
                steps.append(dict(step=int(m.group(1)), loss=float(m.group(3)), ms=float(m.group(6)),
                                  mfu=float(m.group(7)) if m.group(7) else None, tok_s=int(m.group(8))))
            elif m := TOTAL.search(line):
                total = tuple(float(g) if g else None for g in m.groups())  # n/a: a run of one step
    return rows, steps, total, extra


def summarize(path, first, last):
    rows, steps, total, extra = parse(path)
    name = os.path.splitext(os.path.basename(path))[0]
    if not steps:
        return dict(run=name, note=("out of memory" if extra.get("oom") else "no step lines") +
                    (f" (estimate {extra['estimate_gib']:.1f} GiB)" if "estimate_gib" in extra else ""))
    window = [s for s in steps if first <= s["step"] <= last] or steps
    ms = statistics.mean(s["ms"] for s in window)
    tokens = int(rows["total batch size"])
    L, C, T = (int(rows[k]) for k in ("num_layers L", "channels C", "sequence length T"))
    flops_per_token = 6 * int(rows["num_parameters"].replace(",", "")) + 6 * L * C * T
    tok_s = tokens / (ms / 1000)
    mfus = [s["mfu"] for s in window if s["mfu"] is not None]
    return dict(run=name, B=rows["micro batch size B"], accum=rows["grad_accum_steps"], recompute=rows["recompute"].split()[0],
                zero=rows.get("zero_stage", "-"), offload=rows.get("offload", "-").split()[0],
                estimate_gib=extra.get("estimate_gib"), host_gib=extra.get("host_gib"),
                steps=f"{window[0]['step']}-{window[-1]['step']}", ms=ms, ms_sd=statistics.pstdev(s["ms"] for s in window),
                ms_median=statistics.median(s["ms"] for s in window),
                tok_s=tok_s, mfu=100 * tok_s * flops_per_token / PEAK,
                con_mfu=statistics.mean(mfus) if mfus else None, con_tok_s=steps[-1]["tok_s"],
                avg_ms=total[0] if total else None, peak_gib=total[1] if total else None,
                final_loss=steps[-1]["loss"])


def fmt(v, spec):
    return format("-", spec.split(".")[0]) if v is None else format(v, spec)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("logs", nargs="+")
    p.add_argument("--first", type=int, default=11)
    p.add_argument("--last", type=int, default=30)
    a = p.parse_args()
    head = (f"{'run':<22} {'B':>3} {'accum':>5} {'r':>2} {'z':>2} {'offload':>9} {'steps':>6} {'ms/step':>9} {'sd':>6} {'median':>9} "
            f"{'tok/s':>9} {'MFU%':>5} | {'con MFU%':>8} {'con tok/s':>9} {'avg ms':>9} {'peak GiB':>8} {'est GiB':>7} "
            f"{'host GiB':>8} {'loss':>8}")
    print(head)
    print("-" * len(head))
    for path in a.logs:
        r = summarize(path, a.first, a.last)
        if "note" in r:
            print(f"{r['run']:<22} {r['note']}")
            continue
        print(f"{r['run']:<22} {r['B']:>3} {r['accum']:>5} {r['recompute']:>2} {r['zero']:>2} {r['offload']:>9} "
              f"{r['steps']:>6} {r['ms']:>9.2f} {r['ms_sd']:>6.2f} {r['ms_median']:>9.2f} {r['tok_s']:>9.0f} {r['mfu']:>5.1f} | "
              f"{fmt(r['con_mfu'], '>8.1f')} {r['con_tok_s']:>9} {fmt(r['avg_ms'], '>9.2f')} {fmt(r['peak_gib'], '>8.2f')} "
              f"{fmt(r['estimate_gib'], '>7.2f')} {fmt(r['host_gib'], '>8.1f')} {r['final_loss']:>8.4f}")


if __name__ == "__main__":
    main()
