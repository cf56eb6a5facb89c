"""llm.c's outlier detector for -sl: the z-score of a value against the last 128 values, itself included.

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
