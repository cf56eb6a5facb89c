"""Draw runs' main.log into a PNG: train and val loss, and HellaSwag, beside the published references.

    python -m ds_train.plot runs/gpt2_124M                          # -> runs/gpt2_124M/main.png
    python -m ds_train.plot runs/a runs/b/main.log --output compare.png --title "124M: ZeRO-1 vs ZeRO-3"

Each argument is a run directory (its main.log) or a main.log file; each run is one colour. --output is a
file whose extension names the format (png, pdf, svg, ...; none: .png is added), or an existing folder, which
gets main.png. A nan or inf loss (ds_train logs trl:nan for a skipped step) is left out of the curves. The dashed
lines are what a GPT-2 124M reproduction is compared with: llm.c's val loss on FineWeb (about 3.28) and
OpenAI's GPT-2 124M HellaSwag acc_norm (29.55%); the dotted line is chance (25%).
"""

import argparse
import math
import os
import re
import sys
from dataclasses import dataclass, field

if __package__ in (None, ""):
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from ds_train.errors import UserError, usage_error

LLMC_124M_VAL_LOSS = 3.28
GPT2_124M_HELLASWAG = 0.2955
CHANCE = 0.25
LINE = re.compile(r"s:(\d+) (trl|tel|eval):([-\d.eE+naif]+)")


@dataclass
class Run:
    name: str
    train: list = field(default_factory=list)  # (step, loss)
    val: list = field(default_factory=list)
    hellaswag: list = field(default_factory=list)

    def non_finite(self) -> list:
        """The steps whose logged train or val loss is nan or inf."""
        return sorted({step for step, loss in self.train + self.val if not math.isfinite(loss)})


def finite(points: list) -> list:
    """The (step, value) points whose value is a number: nan and inf are not drawn (nor smoothed over)."""
    return [(step, value) for step, value in points if math.isfinite(value)]


def read_log(path: str) -> Run:
    log = os.path.join(path, "main.log") if os.path.isdir(path) else path
    name = os.path.basename(os.path.dirname(os.path.abspath(log)))
    run = Run(name)
    series = {"trl": run.train, "tel": run.val, "eval": run.hellaswag}
    try:
        with open(log, encoding="utf-8") as f:
            for line in f:
                if m := LINE.match(line):
                    series[m.group(2)].append((int(m.group(1)), float(m.group(3))))
    except UnicodeDecodeError as e:
        raise UserError(f"{log}: not a text file (not UTF-8: {e.reason}); expected a main.log") from None
    except OSError as e:
        raise UserError(f"{log}: cannot read: {e.strerror}") from None
    if not (run.train or run.val):
        raise UserError(f"{log}: no llm.c log lines (s:N trl:... / s:N tel:...)")
    if not (finite(run.train) or finite(run.val)):
        raise UserError(f"{log}: every loss in it is nan or inf; there is nothing to plot")
    return run


def smooth(values: list, span: int) -> list:
    """Exponential moving average, bias-corrected, as llm.c's vislog smooths the train loss."""
    out, ema, alpha = [], 0.0, 2 / (span + 1)
    for i, v in enumerate(values, start=1):
        ema = (1 - alpha) * ema + alpha * v
        out.append(ema / (1 - (1 - alpha) ** i))
    return out


def train_curve(run: Run):
    """(steps, losses, smoothed losses) of the train loss's finite points: a nan or inf loss is skipped, so the
    smoothed curve goes on past it instead of turning nan there for the rest of the run."""
    steps, losses = zip(*finite(run.train))
    return steps, losses, smooth(losses, max(1, len(losses) // 50))


def draw(runs: list, output: str, title: str = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    has_hellaswag = any(finite(r.hellaswag) for r in runs)
    fig, axes = plt.subplots(1, 2 if has_hellaswag else 1, figsize=(13 if has_hellaswag else 7.5, 4.8), squeeze=False)
    loss_ax = axes[0][0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    lows, highs = [LLMC_124M_VAL_LOSS], []
    for i, run in enumerate(runs):
        color = colors[i % len(colors)]
        if finite(run.train):
            steps, losses, smoothed = train_curve(run)
            loss_ax.plot(steps, losses, color=color, alpha=0.2, linewidth=0.8)
            loss_ax.plot(steps, smoothed, color=color, linewidth=1.5, label=f"{run.name} train")
            lows.append(min(smoothed))
            highs.append(smoothed[len(smoothed) // 20])  # past the first few percent, where loss falls from ~11
        if finite(run.val):
            steps, losses = zip(*finite(run.val))
            loss_ax.plot(steps, losses, color=color, linestyle="--", marker="o", markersize=3, label=f"{run.name} val")
            lows.append(min(losses))
            highs.append(losses[1] if len(losses) > 1 else losses[0])
    loss_ax.axhline(LLMC_124M_VAL_LOSS, color="black", linestyle="--", linewidth=1,
                    label=f"llm.c GPT-2 124M val ({LLMC_124M_VAL_LOSS})")
    loss_ax.set_ylim(min(lows) - 0.2, max(highs + [min(lows) + 1]) + 0.2)
    loss_ax.set(xlabel="step", ylabel="loss", title="loss (train smoothed; val dashed)")
    loss_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_ax.grid(alpha=0.3)
    loss_ax.legend(fontsize=8)
    if has_hellaswag:
        ax = axes[0][1]
        points = [100 * CHANCE, 100 * GPT2_124M_HELLASWAG]
        for i, run in enumerate(runs):
            if finite(run.hellaswag):
                steps, acc = zip(*finite(run.hellaswag))
                points += [100 * a for a in acc]
                ax.plot(steps, [100 * a for a in acc], color=colors[i % len(colors)], marker="o", markersize=3, label=run.name)
        ax.set_ylim(min(points) - 1, max(points) + 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.axhline(100 * GPT2_124M_HELLASWAG, color="black", linestyle="--", linewidth=1,
                   label=f"OpenAI GPT-2 124M ({100 * GPT2_124M_HELLASWAG:.2f}%)")
        ax.axhline(100 * CHANCE, color="gray", linestyle=":", linewidth=1, label="chance (25%)")
        ax.set(xlabel="step", ylabel="acc_norm (%)", title="HellaSwag")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        fig.savefig(output, dpi=110)
    except OSError as e:
        raise UserError(f"--output {output}: cannot write: {e.strerror or e}") from None
    finally:
        plt.close(fig)


def output_path(output: str, first_run: str) -> str:
    """The file to write: --output (an existing folder gets main.png, a name without an extension gets .png),
    or main.png beside the first run's main.log; its format and folder checked before any drawing."""
    if output is None:
        return os.path.join(first_run if os.path.isdir(first_run) else os.path.dirname(first_run) or ".", "main.png")
    if os.path.isdir(output):
        return os.path.join(output, "main.png")
    extension = os.path.splitext(output)[1][1:].lower()
    if not extension:
        return output_path(output + ".png", first_run)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    formats = sorted(FigureCanvasAgg.get_supported_filetypes())
    if extension not in formats:
        raise UserError(f"--output {output}: unsupported format .{extension}; expected one of {', '.join(formats)}")
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise UserError(f"--output {output}: no such folder {folder}")
    return output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ds_train.plot", allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN", help="a run directory or a main.log")
    parser.add_argument("--output", metavar="FILE", help="the image (its extension names the format; none: .png; an "
                        "existing folder: FOLDER/main.png); default: main.png beside the first run's main.log")
    parser.add_argument("--title")
    parser.error = usage_error
    try:
        args = parser.parse_args(argv)
        output = output_path(args.output, args.runs[0])
        runs = [read_log(path) for path in args.runs]
        draw(runs, output, args.title)
    except UserError as e:
        print(f"ds_train.plot: error: {e}", file=sys.stderr, flush=True)
        return 2
    for run, path in zip(runs, args.runs):
        if steps := run.non_finite():
            shown = ", ".join(map(str, steps[:5])) + (", ..." if len(steps) > 5 else "")
            print(f"note: {path}: nan/inf loss at {len(steps)} step(s) ({shown}), left out of the curves")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
