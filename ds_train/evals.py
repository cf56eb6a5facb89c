"""Evaluation: val loss over val shards, HellaSwag, and text samples; for the trainer and ds_train.evaluate.

Each function takes the model (a GPT module; under DeepSpeed, engine.module) and works on any number of
ranks: every rank runs the same number of forward passes, as ZeRO-3's parameter gathering requires, and the
results are summed over ranks. The val loss and HellaSwag, which can take minutes, take a `stop`: a collective
check (every rank calls it at the same batches, so every rank sees the same answer) that a stop signal came, on
which they give up and return None, so that a preempted run saves within the launcher's or the scheduler's grace
time instead of being killed mid-evaluation.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch

from ds_train.tokenizer import EOT, decode


def _device(model):
    return next(model.parameters()).device


def _all_reduce_sum(values: list, device) -> list:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor.tolist()


VAL_BATCHES_PER_STOP_CHECK = 8  # each check waits for the GPU: the val loss's batches otherwise queue unhindered


@torch.no_grad()
def val_loss(model, loader, num_batches: int, stop=None):
    """Mean loss over the first `num_batches` val batches of every rank, averaged over ranks; None where `stop`
    said to stop first."""
    model.eval()
    device = _device(model)
    loader.reset()
    total = torch.zeros((), device=device)
    for i in range(num_batches):
        if stop and i and i % VAL_BATCHES_PER_STOP_CHECK == 0 and stop():
            model.train()
            return None
        x, y = loader.next_batch()
        total += model(x.to(device), y.to(device)).float()
    model.train()
    summed, ranks = _all_reduce_sum([total.item() / num_batches, 1.0], device)
    return summed / ranks


def val_num_batches(loader, val_max_steps: int, pattern: str) -> tuple:
    """(batches, note): -m's val batches, at most the split's (as llm.c's loaders capped val_max_steps), since
    more would read batches twice and weigh them twice; -1 is all of them. The note says when -m was capped."""
    split = loader.samples_per_epoch
    if 0 < val_max_steps <= split:
        return val_max_steps, None
    if val_max_steps < 0:
        return split, None
    return split, (f"-m {val_max_steps}: the val split (-j {pattern}) holds {split} batches of "
                   f"B*T*world = {loader.sample_tokens} tokens; the val loss reads those {split}")


@dataclass
class HellaSwagResult:
    correct_norm: int  # lowest mean loss over the ending tokens: acc_norm, the reported figure
    correct: int  # lowest summed loss: acc
    total: int

    @property
    def acc_norm(self) -> float:
        return self.correct_norm / self.total

    @property
    def acc(self) -> float:
        return self.correct / self.total


def _batches(examples: list, token_budget: int) -> list:
    """Consecutive examples, as many per forward as fit 4 padded rows each in `token_budget` tokens."""
    batches, current, longest = [], [], 0
    for example in examples:
        length = len(example.ctx_tokens) + max(len(e) for e in example.ending_tokens)
        if current and 4 * (len(current) + 1) * max(longest, length) > token_budget:
            batches.append(current)
            current, longest = [], 0
        current.append(example)
        longest = max(longest, length)
    return batches + ([current] if current else [])


def score_endings(model, examples: list, device):
    """(mean loss, summed loss) over each ending's tokens given its context, shape (examples, 4): one forward
    pass for all four endings of every example, padded to the longest row."""
    rows = [e.ctx_tokens + ending for e in examples for ending in e.ending_tokens]
    width = max(map(len, rows))
    tokens = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=bool)
    for i, (row, example) in enumerate(zip(rows, (e for e in examples for _ in range(4)))):
        tokens[i, :len(row)] = row
        mask[i, len(example.ctx_tokens):len(row)] = True  # the ending's tokens are the ones scored
    tokens, mask = torch.from_numpy(tokens).to(device), torch.from_numpy(mask).to(device)
    losses = model(tokens[:, :-1], tokens[:, 1:], reduction="none") * mask[:, 1:]  # the head's chunks, no logits
    summed = losses.sum(1)
    return (summed / mask[:, 1:].sum(1)).view(-1, 4), summed.view(-1, 4)


@torch.no_grad()
def hellaswag(model, examples: list, token_budget: int, stop=None):
    """llm.c's HellaSwag: each ending scored by its mean token loss given the context, lowest wins -> a
    HellaSwagResult, or None where `stop` (checked before each forward after the first) said to stop first.

    Examples are split across ranks in contiguous ranges; the four endings of several examples share one
    forward pass (up to `token_budget` tokens, padded to the longest row).
    """
    model.eval()
    device = _device(model)
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if torch.distributed.is_initialized() else (0, 1)
    per_rank = math.ceil(len(examples) / world)
    mine = examples[rank * per_rank:(rank + 1) * per_rank]
    batches = _batches(mine, token_budget)
    most = len(batches)
    if torch.distributed.is_initialized():
        most_tensor = torch.tensor(most, device=device)
        torch.distributed.all_reduce(most_tensor, op=torch.distributed.ReduceOp.MAX)
        most = int(most_tensor.item())
    correct_norm = correct = 0
    for i in range(most):
        if stop and i and stop():  # each forward's result is read at once anyway: the check adds no wait
            model.train()
            return None
        if i >= len(batches):  # this rank has fewer examples: keep step with the others, count nothing
            score_endings(model, examples[:1], device)
            continue
        batch = batches[i]
        mean, summed = score_endings(model, batch, device)
        labels = torch.tensor([e.label for e in batch], device=device)
        correct_norm += int((mean.argmin(1) == labels).sum())
        correct += int((summed.argmin(1) == labels).sum())
    model.train()
    correct_norm, correct, total = _all_reduce_sum([correct_norm, correct, len(mine)], device)
    return HellaSwagResult(int(correct_norm), int(correct), int(total))


@torch.no_grad()
def sample_text(model, new_tokens: int, seed: int = 1337) -> str:
    """Tokens sampled from EOT with a fixed seed, decoded.

    Every rank runs it (ZeRO-3 needs all ranks in each forward) and, with the same seed, draws the same text.
    """
    model.eval()
    start = torch.full((1, 1), EOT, dtype=torch.long, device=_device(model))
    tokens = model.generate(start, new_tokens, torch.Generator().manual_seed(seed))
    model.train()
    return decode(tokens[0, 1:].tolist())
