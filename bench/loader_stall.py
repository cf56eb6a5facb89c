"""Does reading the llm.c shards stall the GPU? Runs the trainer (main.py's flags) with its real shard loader,
or with `memory` first, with a loader that serves 32 batches from pinned memory in turn (no reads, no copies
on the CPU). Equal step times mean the loader is hidden behind the GPU's work.

    python bench/loader_stall.py real|memory --ds_config ... (main.py's flags)
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from ds_train import data, main  # noqa: E402


class InMemoryLoader(data.ShardLoader):
    """The first BATCHES micro-batches, read once into pinned memory and served in turn over and over: a loader
    that costs nothing, with batches that still change from one micro-step to the next."""
    BATCHES = 32

    def next_batch(self):
        if not hasattr(self, "_batches"):
            pin = torch.cuda.is_available()
            self._batches = [tuple(t.pin_memory() if pin else t for t in super(InMemoryLoader, self).next_batch())
                             for _ in range(self.BATCHES)]
            self._served = 0
        self._served += 1
        return self._batches[(self._served - 1) % self.BATCHES]


if __name__ == "__main__":
    mode, argv = sys.argv[1], sys.argv[2:]
    if mode not in ("real", "memory"):
        sys.exit("usage: python bench/loader_stall.py real|memory MAIN_FLAGS...")
    if mode == "memory":
        main.ShardLoader = InMemoryLoader
    sys.exit(main.main(argv))
