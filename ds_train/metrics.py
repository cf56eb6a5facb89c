"""What a run reports: the start-up table, the per-step console line, llm.c's main.log, and MFU."""

import json
import os
import re

from ds_train.errors import UserError

# dense bf16 tensor-core peaks (FLOP/s), matched against torch.cuda.get_device_name(); first match wins
PEAK_BF16_FLOPS = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("GH200", 989e12), ("H100", 989e12),
                   ("H200", 989e12), ("H800", 989e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12),
                   ("A10G", 70e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12), ("B200", 2250e12)]


def peak_bf16_flops(device_name: str):
    """The GPU's dense bf16 peak, or None when unknown (then MFU is not shown)."""
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in device_name), None)


class MainLog:
    """llm.c's main.log: `s:%d tel:%.4f` (val) and `s:%d trl:%.4f lr:%.6f norm:%.2f` (train) lines, rank 0 only."""

    def __init__(self, output_dir, enabled: bool, resume_step=None, resume_step_evaluated=True):
        """A new log, or with `resume_step` the existing one cut back to what the checkpoint at that step had
        seen (train lines before it, val and eval lines up to it, or before it where a stop signal cut that step's
        evaluation short and the resumed run does it again), so that no step appears twice."""
        self.file = None
        if output_dir and enabled:
            path = os.path.join(output_dir, "main.log")
            try:
                kept = []
                if resume_step is not None and os.path.exists(path):
                    with open(path) as f:
                        kept = [line for line in f if self._before(line, resume_step, resume_step_evaluated)]
                self.file = open(path, "w")
                self.file.writelines(kept)
            except OSError as e:
                raise UserError(f"-o {output_dir}: cannot write {path}: {e.strerror}") from None

    @staticmethod
    def _before(line: str, step: int, evaluated: bool) -> bool:
        m = re.match(r"s:(\d+) (\w+):", line)
        return bool(m) and line.endswith("\n") and (int(m.group(1)) < step or
                                                   (int(m.group(1)) == step and m.group(2) != "trl" and evaluated))

    def _write(self, line: str):
        if self.file:
            self.file.write(line + "\n")
            self.file.flush()

    def val(self, step: int, loss: float):
        self._write(f"s:{step} tel:{loss:.4f}")

    def train(self, step: int, loss: float, lr: float, norm: float):
        self._write(f"s:{step} trl:{loss:.4f} lr:{lr:.6f} norm:{norm:.2f}")

    def eval(self, step: int, acc_norm: float):
        self._write(f"s:{step} eval:{acc_norm:.4f}")


class Monitor:
    """ds_train's figures through DeepSpeed's monitor: whatever the JSON enables (tensorboard, csv_monitor,
    wandb, comet), written by rank 0, against the optimizer step."""

    def __init__(self, engine):
        self.monitor = engine.monitor if engine.monitor.enabled else None

    def log(self, step: int, **values):
        events = [(name, float(value), step) for name, value in values.items() if value is not None]
        if self.monitor and events:
            self.monitor.write_events(events)


def save_config(output_dir: str, name: str, config: dict):
    with open(os.path.join(output_dir, name), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")


class Throughput:
    """Tokens/s smoothed as llm.c does: an EMA over steps after the first, bias-corrected."""

    def __init__(self):
        self.ema = 0.0
        self.steps = 0
        self.total_s = 0.0

    def update(self, tokens: int, seconds: float) -> float:
        rate = tokens / seconds
        if self.steps == 0:  # the first step includes warm-up (allocation, kernel selection)
            self.steps = 1
            return rate
        self.total_s += seconds
        self.ema = 0.95 * self.ema + 0.05 * rate
        corrected = self.ema / (1 - 0.95 ** self.steps)
        self.steps += 1
        return corrected

    def summary(self) -> str:
        """llm.c's closing line: the mean over the steps after the first (a run of one step has none to average)."""
        if self.steps == 0:
            return "total average iteration time: n/a (no step ran)"
        if self.steps < 2:
            return "total average iteration time: n/a (only the first step ran, and it is warm-up, not averaged)"
        return f"total average iteration time: {1000 * self.total_s / (self.steps - 1):.2f} ms"


def step_line(step, num_steps, loss, norm, lr, ms, tokens_per_s, mfu=None) -> str:
    mfu_part = f" | {100 * mfu:.1f}% bf16 MFU" if mfu is not None else ""
    return (f"step {step:4d}/{num_steps} | loss {loss:.6f} | norm {norm:.4f} | lr {lr:.2e} | {ms:.2f} ms"
            f"{mfu_part} | {tokens_per_s:.0f} tok/s")


def table(rows) -> str:
    """llm.c's start-up parameter table."""
    rule = "+-----------------------+----------------------------------------------------+"
    lines = [rule, f"| {'Parameter':<21} | {'Value':<50} |", rule]
    for key, value in rows:
        lines.append(rule if key is None else f"| {key:<21} | {str(value):<50} |")
    lines.append(rule)
    return "\n".join(lines)
