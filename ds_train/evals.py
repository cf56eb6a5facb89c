"""Evaluation inside the training loop: val loss over the val shards, and text samples."""

import torch

from ds_train.distributed import all_reduce_mean
from ds_train.tokenizer import EOT, decode


@torch.no_grad()
def val_loss(engine, loader, num_batches: int) -> float:
    """Mean loss over the first `num_batches` val batches of every rank, averaged over ranks."""
    engine.eval()
    loader.reset()
    total = torch.zeros((), device=engine.device)
    for _ in range(num_batches):
        x, y = loader.next_batch()
        total += engine(x.to(engine.device), y.to(engine.device)).float()
    engine.train()
    return all_reduce_mean(total / num_batches)


def sample_text(engine, new_tokens: int, seed: int = 1337) -> str:
    """Tokens sampled from EOT with a fixed seed, decoded.

    Every rank runs it (ZeRO-3 needs all ranks in each forward) and, with the same seed, draws the same text.
    """
    engine.eval()
    start = torch.full((1, 1), EOT, dtype=torch.long, device=engine.device)
    tokens = engine.module.generate(start, new_tokens, torch.Generator().manual_seed(seed))
    engine.train()
    return decode(tokens[0, 1:].tolist())
