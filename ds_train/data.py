"""llm.c token shards: reading, writing, and the distributed loader that serves them.

A shard is a 256-int32 header [20240520, 1, ntokens, 0, ...] followed by ntokens uint16 GPT-2 tokens.
The loader reproduces llm.c's layout and order: one step's sample is B*T*world + 1 contiguous tokens of a
shard and rank r reads the B*T + 1 tokens at offset r*B*T; the train split is shuffled per epoch (shard
order, then sample order inside each shard) with llm.c's mt19937 seeded 42 + rank; val is read in order.
"""

import glob
import os

import numpy as np
import torch

from ds_train.errors import UserError
from ds_train.mt19937 import MT19937, random_permutation

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_BYTES = 2


def read_shard_header(path: str) -> int:
    """Validate a shard's header and size; return its token count."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError as e:
        raise UserError(f"{path}: cannot read token shard: {e.strerror}") from None
    if len(raw) < HEADER_BYTES:
        raise UserError(f"{path}: {size} bytes is shorter than the {HEADER_BYTES}-byte header of an llm.c token shard")
    header = np.frombuffer(raw, dtype="<i4")
    magic, version, ntok = int(header[0]), int(header[1]), int(header[2])
    if magic != SHARD_MAGIC:
        raise UserError(f"{path}: bad magic {magic}, expected {SHARD_MAGIC} (not an llm.c token shard)")
    if version != SHARD_VERSION:
        raise UserError(f"{path}: unsupported shard version {version}, expected {SHARD_VERSION}")
    if ntok < 0:
        raise UserError(f"{path}: header says {ntok} tokens, expected a count of 0 or more (corrupt header)")
    expected = HEADER_BYTES + TOKEN_BYTES * ntok
    if size != expected:
        raise UserError(f"{path}: header says {ntok} tokens ({expected} bytes) but the file has {size} bytes (truncated or corrupt)")
    if ntok == 0:
        raise UserError(f"{path}: the shard holds no tokens (its header counts 0 and the file is the {HEADER_BYTES}-byte "
                        "header alone)")
    return ntok


def check_token_ids(window: np.ndarray, vocab_size: int, path: str, offset: int):
    """Refuse token ids that the model has no embedding for (a shard tokenized for another vocabulary, or
    corrupt): `window` holds the shard's tokens from index `offset` on. One max over the window a batch is cut
    from, so it costs nothing next to the step that reads it."""
    if vocab_size is not None and window.size and int(window.max()) >= vocab_size:
        at = int(np.argmax(window >= vocab_size))
        raise UserError(f"{path}: the token at index {offset + at} is {int(window[at])}, expected ids below the "
                        f"model's vocab_size {vocab_size} (a shard tokenized for another vocabulary, or corrupt)")


def read_shard(path: str) -> np.ndarray:
    """The shard's tokens as a read-only uint16 memory map (header validated first)."""
    ntok = read_shard_header(path)
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(ntok,))


class ShardWriter:
    """Appends tokens to one llm.c shard. The shard is built in `path.tmp` and renamed to `path` only when
    closed, so a crash never leaves a file at `path` that looks valid but is not whole."""

    def __init__(self, path: str):
        self.path, self.tokens = path, 0
        self.file = open(f"{path}.tmp", "wb")
        self.file.write(bytes(HEADER_BYTES))  # the header, with the count, is written on close

    def write(self, tokens):
        tokens = np.asarray(tokens)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
            raise ValueError(f"{self.path}: token ids must fit in uint16")
        self.file.write(tokens.astype("<u2").tobytes())
        self.tokens += tokens.size

    def close(self):
        header = np.zeros(HEADER_INTS, dtype="<i4")
        header[:3] = (SHARD_MAGIC, SHARD_VERSION, self.tokens)
        self.file.seek(0)
        self.file.write(header.tobytes())
        self.file.close()
        os.replace(f"{self.path}.tmp", self.path)


def write_shard(path: str, tokens) -> None:
    """Write tokens as one llm.c shard (through a temporary file)."""
    writer = ShardWriter(path)
    writer.write(tokens)
    writer.close()


def writable_dir(path: str, flag: str):
    """Create `path` if needed and check that files can be written there."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path}: is a file, expected a directory")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".write_test")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write there: {e.strerror}") from None


def unwritable_dir_reason(path: str):
    """Why `path` could not be made (or written) as a directory here, found without creating anything (a dry run
    writes nothing); None where nothing stands in the way that this machine can see. (`path` itself being a file is
    config.resolve's error.)"""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing} is a file, so the directory cannot be made"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot write in {existing}"
    return None


def find_shards(pattern: str, flag: str) -> list:
    """Files matching a glob pattern, sorted as llm.c's glob() sorts them."""
    files = sorted(glob.glob(pattern))
    if not files:
        raise UserError(f"{flag} {pattern}: no file matches this pattern")
    if folders := [path for path in files if os.path.isdir(path)]:  # a data folder given for its shards
        raise UserError(f"{flag} {pattern}: {folders[0]} is a directory; expected token shard files, a glob such as "
                        f"{flag.split()[0]} '{os.path.join(folders[0], '*.bin')}'")  # -j, not "-j (with -a 1)"
    return files


class ShardLoader:
    """Serves (inputs, targets) micro-batches of shape (B, T) for one rank.

    Its position (shard, sample, both permutations and the RNG) is `state_dict()`: a few KB of plain
    Python values that a checkpoint can store and `load_state_dict()` restores exactly. With `vocab_size`,
    each batch's token ids are checked as it is cut (check_token_ids).
    """

    def __init__(self, pattern: str, B: int, T: int, rank: int, world: int, shuffle: bool, flag: str = "-i",
                 vocab_size: int = None):
        self.files = find_shards(pattern, flag)
        self.B, self.T, self.rank, self.world, self.shuffle = B, T, rank, world, shuffle
        self.vocab_size = vocab_size
        self.sample_tokens = B * T * world  # a step's sample; +1 for the last target
        self.shard_tokens = []
        for path in self.files:
            ntok = read_shard_header(path)
            if ntok < self.sample_tokens + 1:
                raise UserError(
                    f"{path}: {ntok} tokens is shorter than one sample of B*T*world+1 = {self.sample_tokens + 1} "
                    f"tokens (B={B}, T={T}, world={world}); use a smaller -b/-t or a longer shard")
            self.shard_tokens.append(ntok)
        self.num_tokens = sum(self.shard_tokens)
        self.rng = MT19937(42 + rank) if shuffle else None
        self.shard_order = list(range(len(self.files)))
        self.reset()

    def samples_in_shard(self, shard: int) -> int:
        # the last sample needs one token past its end, so a sample may not start in the final token
        return (self.shard_tokens[shard] - 1) // self.sample_tokens

    @property
    def samples_per_epoch(self) -> int:
        return sum(self.samples_in_shard(i) for i in range(len(self.files)))

    def reset(self):
        """Back to the first sample; with shuffling this starts a new epoch (a new shard order)."""
        self.shard_pos = 0
        if self.shuffle:
            random_permutation(self.shard_order, self.rng)
        self._open_shard()

    def _open_shard(self):
        shard = self.shard_order[self.shard_pos]
        self.tokens = read_shard(self.files[shard])
        self.sample_pos = 0
        self.sample_order = list(range(self.samples_in_shard(shard)))
        if self.shuffle:
            random_permutation(self.sample_order, self.rng)

    def next_window(self):
        """(shard path, shard tokens, start) of this rank's next B*T+1 tokens, and move past them."""
        if self.sample_pos >= len(self.sample_order):
            if self.shard_pos == len(self.files) - 1:
                self.reset()
            else:
                self.shard_pos += 1
                self._open_shard()
        start = self.sample_order[self.sample_pos] * self.sample_tokens + self.rank * self.B * self.T
        self.sample_pos += 1
        return self.files[self.shard_order[self.shard_pos]], self.tokens, start

    def next_batch(self):
        path, tokens, start = self.next_window()
        window = tokens[start:start + self.B * self.T + 1]
        check_token_ids(window, self.vocab_size, path, start)
        buf = torch.from_numpy(window.astype(np.int64))
        return buf[:-1].view(self.B, self.T), buf[1:].view(self.B, self.T)

    def check_ahead(self, num_batches: int):
        """Check the token ids of the first `num_batches` steps' samples now, every rank's part of each (so that
        all ranks refuse the same sample), and go back to the start."""
        self.reset()
        for _ in range(num_batches):
            path, tokens, start = self.next_window()
            sample_start = start - self.rank * self.B * self.T
            check_token_ids(tokens[sample_start:sample_start + self.sample_tokens + 1], self.vocab_size, path, sample_start)
        self.reset()

    def state_dict(self) -> dict:
        return {
            "files": [os.path.basename(f) for f in self.files],
            "layout": [self.B, self.T, self.rank, self.world, self.shuffle],
            "shard_order": list(self.shard_order),
            "shard_pos": self.shard_pos,
            "sample_order": list(self.sample_order),
            "sample_pos": self.sample_pos,
            "rng": self.rng.state_dict() if self.rng else None,
        }

    def load_state_dict(self, state: dict):
        mine = self.state_dict()
        for key in ("files", "layout"):
            if state[key] != mine[key]:
                raise UserError(f"data loader state does not match this run: saved {key} {state[key]}, now {mine[key]}")
        self.shard_order = list(state["shard_order"])
        self.shard_pos = state["shard_pos"]
        self.tokens = read_shard(self.files[self.shard_order[self.shard_pos]])
        self.sample_order = list(state["sample_order"])
        self.sample_pos = state["sample_pos"]
        if self.rng:
            self.rng.load_state_dict(state["rng"])


class ReplayLoader:
    """Serves one rank of a new layout (B, world, grad_accum) the rows that the run's data stream, laid out as
    `stream_world` ranks of `stream_B` rows, puts in each optimizer step.

    A run resumed on another number of ranks or another micro-batch keeps its data order this way: the
    stream's loaders (llm.c's, one per original rank, each with its own shuffle) are replayed here without
    reading their tokens, a step's rows (T+1 tokens each) are lined up in (micro-step, original rank, row)
    order, and rank r takes rows [(m*world + r)*B, +B) at micro-step m. Every step trains on exactly the rows
    it would have trained on in the original layout, so nothing is repeated or skipped and the gradient is
    the same (up to float summation order).
    """

    def __init__(self, pattern: str, B: int, T: int, rank: int, world: int, grad_accum: int, shuffle: bool,
                 stream_B: int, stream_world: int, flag: str = "-i", vocab_size: int = None):
        rows_per_step = B * world * grad_accum
        if rows_per_step % (stream_B * stream_world):
            raise UserError(f"{flag} {pattern}: a step of {rows_per_step} rows on this layout is not a whole number of "
                            f"the data stream's micro-steps of {stream_B}x{stream_world} rows")
        self.loaders = [ShardLoader(pattern, stream_B, T, r, stream_world, shuffle, flag) for r in range(stream_world)]
        self.B, self.T, self.rank, self.world, self.grad_accum = B, T, rank, world, grad_accum
        self.vocab_size = vocab_size
        self.stream_B, self.stream_world = stream_B, stream_world
        self.stream_accum = rows_per_step // (stream_B * stream_world)
        self.num_tokens = self.loaders[0].num_tokens
        self.micro_step, self.windows = 0, None

    def reset(self):
        for loader in self.loaders:
            loader.reset()
        self.micro_step = 0

    def next_batch(self):
        if self.micro_step == 0:  # a new optimizer step: where each of its stream micro-batches lies
            self.windows = [loader.next_window() for _ in range(self.stream_accum) for loader in self.loaders]
        first = (self.micro_step * self.world + self.rank) * self.B
        rows = []
        for row in range(first, first + self.B):
            path, tokens, start = self.windows[row // self.stream_B]
            start += (row % self.stream_B) * self.T
            window = tokens[start:start + self.T + 1]
            check_token_ids(window, self.vocab_size, path, start)
            rows.append(window.astype(np.int64))
        self.micro_step = (self.micro_step + 1) % self.grad_accum
        buf = torch.from_numpy(np.stack(rows))
        return buf[:, :-1], buf[:, 1:]

    def state_dict(self) -> dict:
        assert self.micro_step == 0, "the data position is saved between optimizer steps"
        return {"stream": [self.stream_B, self.stream_world], "loaders": [loader.state_dict() for loader in self.loaders]}

    def load_state_dict(self, state: dict):
        for loader, loader_state in zip(self.loaders, state["loaders"], strict=True):
            loader.load_state_dict(loader_state)
        self.micro_step = 0
