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
TOTAL = re.compile(r"total average iteration time: (\S+) ms(?: \| peak memory (\S+) GiB)?")


def parse(path):
    rows, steps, total = {}, [], None
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if m := ROW.match(line):
                rows.setdefault(m.group(1), m.group(2))
            elif m := STEP.match(line):
                steps.append(dict(step=int(m.group(1)), loss=float(m.group(3)), ms=float(m.group(6)),
                                  mfu=float(m.group(7)) if m.group(7) else None, tok_s=int(m.group(8))))
            elif m := TOTAL.search(line):
                total = (float(m.group(1)), float(m.group(2)) if m.group(2) else None)
    return rows, steps, total


def summarize(path, first, last):
    rows, steps, total = parse(path)
    name = os.path.splitext(os.path.basename(path))[0]
    if not steps:
        return dict(run=name, note="no step lines")
    window = [s for s in steps if first <= s["step"] <= last] or steps
    ms = statistics.mean(s["ms"] for s in window)
    tokens = int(rows["total batch size"])
    L, C, T = (int(rows[k]) for k in ("num_layers L", "channels C", "sequence length T"))
    flops_per_token = 6 * int(rows["num_parameters"].replace(",", "")) + 6 * L * C * T
    tok_s = tokens / (ms / 1000)
    mfus = [s["mfu"] for s in window if s["mfu"] is not None]
    return dict(run=name, B=rows["micro batch size B"], accum=rows["grad_accum_steps"], recompute=rows["recompute"].split()[0],
                steps=f"{window[0]['step']}-{window[-1]['step']}", ms=ms, ms_sd=statistics.pstdev(s["ms"] for s in window),
                tok_s=tok_s, mfu=100 * tok_s * flops_per_token / PEAK,
                con_mfu=statistics.mean(mfus) if mfus else None, con_tok_s=steps[-1]["tok_s"],
                avg_ms=total[0] if total else None, peak_gib=total[1] if total else None,
                final_loss=steps[-1]["loss"])


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("logs", nargs="+")
    p.add_argument("--first", type=int, default=11)
    p.add_argument("--last", type=int, default=30)
    a = p.parse_args()
    head = (f"{'run':<18} {'B':>3} {'accum':>5} {'r':>2} {'steps':>6} {'ms/step':>9} {'sd':>6} {'tok/s':>9} "
            f"{'MFU%':>5} | {'con MFU%':>8} {'con tok/s':>9} {'avg ms':>9} {'peak GiB':>8} {'loss':>8}")
    print(head)
    print("-" * len(head))
    for path in a.logs:
        r = summarize(path, a.first, a.last)
        if "note" in r:
            print(f"{r['run']:<18} {r['note']}")
            continue
        print(f"{r['run']:<18} {r['B']:>3} {r['accum']:>5} {r['recompute']:>2} {r['steps']:>6} {r['ms']:>9.2f} "
              f"{r['ms_sd']:>6.2f} {r['tok_s']:>9.0f} {r['mfu']:>5.1f} | {fmt(r['con_mfu'], '>8.1f')} "
              f"{r['con_tok_s']:>9} {fmt(r['avg_ms'], '>9.2f')} {fmt(r['peak_gib'], '>8.2f')} {r['final_loss']:>8.4f}")


if __name__ == "__main__":
    main()
