"""llm.c's learning-rate schedules (llmc/schedulers.h), step counted from 0 over `total_steps` steps.

DeepSpeed's own WarmupCosineLR warms up logarithmically and decays to other ratios, so ds_train sets the
rate itself each step instead of using a DeepSpeed `scheduler` section.
"""

import math

SCHEDULES = ("cosine", "linear", "constant", "wsd")


def learning_rate(step: int, schedule: str, lr: float, warmup: int, total_steps: int, final_frac: float) -> float:
    min_lr = lr * final_frac
    if schedule == "constant":
        return lr
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "wsd":
        decay_start = int(0.8 * total_steps)
        if step < decay_start:
            return lr
        progress = (step - decay_start) / (total_steps - decay_start)
        return min_lr + (1.0 - math.sqrt(progress)) * (lr - min_lr)
    progress = (step - warmup) / (total_steps - warmup)
    if schedule == "cosine":
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)
    if schedule == "linear":
        return lr - progress * (lr - min_lr)
    raise ValueError(f"unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
