"""Write llm.c token shards of uniformly random GPT-2 token ids (for throughput runs; nothing to learn).

    python bench/random_shards.py OUT_DIR [--train 20000000] [--val 1000000] [--seed 0]

writes OUT_DIR/random_train_000000.bin and OUT_DIR/random_val_000000.bin.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ds_train.data import write_shard  # noqa: E402

VOCAB = 50257


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--train", type=int, default=20_000_000, help="train tokens")
    p.add_argument("--val", type=int, default=1_000_000, help="val tokens")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    for split, n in (("train", a.train), ("val", a.val)):
        path = os.path.join(a.out_dir, f"random_{split}_000000.bin")
        write_shard(path, rng.integers(0, VOCAB, size=n, dtype=np.uint16))
        print(f"wrote {path}: {n} tokens")


if __name__ == "__main__":
    main()
