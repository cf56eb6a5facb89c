"""The weak-scaling table of bench/scaling.sh's logs, named <run>_gpus<N>.log: tokens/s, tokens/s per GPU, and the
efficiency at N GPUs, tokens/s at N / (N x tokens/s of the same run at 1 GPU), over the same window of steps as
bench/summarize.py.

    python bench/scaling_table.py LOG [LOG ...] [--first 4] [--last 15]
"""

import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from summarize import summarize  # noqa: E402

NAME = re.compile(r"^(?P<run>.+)_gpus(?P<gpus>\d+)$")


def scaling_rows(paths, first: int, last: int):
    """One dict per log, in the order given: run, gpus, tok_s, per_gpu and efficiency (None where the run has no
    steps, or no 1-GPU run to compare with), and note (why a run has no figures)."""
    runs = []
    for path in paths:
        summary = summarize(path, first, last)
        name = NAME.match(summary["run"])
        if not name:
            raise SystemExit(f"scaling_table.py: {path}: expected a log named <run>_gpus<N>.log")
        runs.append(dict(run=name["run"], gpus=int(name["gpus"]), tok_s=summary.get("tok_s"), note=summary.get("note")))
    one_gpu = {r["run"]: r["tok_s"] for r in runs if r["gpus"] == 1 and r["tok_s"]}
    for r in runs:
        r["per_gpu"] = r["tok_s"] / r["gpus"] if r["tok_s"] else None
        r["efficiency"] = r["per_gpu"] / one_gpu[r["run"]] if r["tok_s"] and r["run"] in one_gpu else None
    return runs


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("logs", nargs="+")
    p.add_argument("--first", type=int, default=4)
    p.add_argument("--last", type=int, default=15)
    a = p.parse_args()
    print(f"{'run':<18} {'GPUs':>4} {'tok/s':>10} {'per GPU':>9} {'efficiency':>10}")
    for r in scaling_rows(a.logs, a.first, a.last):
        if r["note"]:
            print(f"{r['run']:<18} {r['gpus']:>4} {r['note']}")
            continue
        efficiency = "-" if r["efficiency"] is None else f"{100 * r['efficiency']:.1f}%"
        print(f"{r['run']:<18} {r['gpus']:>4} {r['tok_s']:>10.0f} {r['per_gpu']:>9.0f} {efficiency:>10}")


if __name__ == "__main__":
    main()
