"""llm.c's outlier detector (the z-score of a value against the last 128 values, itself included) and the guard
that skips bad updates with it: -sl, -sg and non-finite losses or grad norms.

Until 128 values have been seen the z-score is NaN (no judgement yet); a window with no spread gives 0.
Its state is a few numbers and the window, saved in checkpoints so a resumed run judges as the first would.
"""

import math

WINDOW = 128


class OutlierDetector:
    def __init__(self):
        self.window = []
        self.index = 0  # where the next value goes once the window is full

    def update(self, value: float) -> float:
        if len(self.window) < WINDOW:
            self.window.append(value)
            return math.nan
        self.window[self.index] = value
        self.index = (self.index + 1) % WINDOW
        mean = math.fsum(self.window) / WINDOW
        std = math.sqrt(max(0.0, math.fsum(v * v for v in self.window) / WINDOW - mean * mean))
        return 0.0 if std == 0.0 else (value - mean) / std

    def state_dict(self) -> dict:
        return {"window": list(self.window), "index": self.index}

    def load_state_dict(self, state: dict):
        self.window, self.index = list(state["window"]), state["index"]


class UpdateGuard:
    """Whether a step's update may go ahead: the NaN guard, and llm.c's -sl / -sg outlier skips.

    Judged on the step's mean loss over all ranks and its grad norm before clipping, so every rank decides
    alike. Each detector sees every finite value, as in llm.c, whether or not the step is skipped.
    """

    def __init__(self, skip_loss_z: float = 0.0, skip_grad_z: float = 0.0):
        self.skip_loss_z, self.skip_grad_z = skip_loss_z, skip_grad_z
        self.loss, self.norm = OutlierDetector(), OutlierDetector()

    def judge(self, loss: float, norm: float):
        """-> why the update must be skipped, or None."""
        loss_z = self.loss.update(loss) if math.isfinite(loss) else math.nan
        norm_z = self.norm.update(norm) if math.isfinite(norm) else math.nan
        if not math.isfinite(loss):
            return "non-finite loss"
        if not math.isfinite(norm):
            return "non-finite grad norm"
        if self.skip_loss_z > 0 and loss_z > self.skip_loss_z:  # NaN (window not yet full) compares False
            return f"loss z-score {loss_z:.2f} > -sl {self.skip_loss_z:g}"
        if self.skip_grad_z > 0 and norm_z > self.skip_grad_z:
            return f"grad norm z-score {norm_z:.2f} > -sg {self.skip_grad_z:g}"
        return None

    def state_dict(self) -> dict:
        return {"loss": self.loss.state_dict(), "norm": self.norm.state_dict()}

    def load_state_dict(self, state: dict):
        self.loss.load_state_dict(state["loss"])
        self.norm.load_state_dict(state["norm"])
