"""The shard reader and the distributed loader: llm.c's batches, exact state restore, one-line errors."""

import json
import os

import numpy as np
import pytest
import torch

from conftest import REPO, TRAIN_SHARD, VAL_SHARD, shared_path
from ds_train.data import HEADER_BYTES, ReplayLoader, ShardLoader, read_shard, read_shard_header, write_shard
from ds_train.errors import UserError

REFERENCE = os.path.join(REPO, "tests", "fixtures", "llmc_loader_reference.json")


def test_loader_serves_llmc_batches(tmp_path):
    """Same files, B, T and world size -> the same batches as llm.c's C loader, rank by rank, across epochs."""
    train = shared_path("llmc", "tinyshakespeare", "tiny_shakespeare_train.bin")
    val = shared_path("llmc", "tinyshakespeare", "tiny_shakespeare_val.bin")
    ref = json.load(open(REFERENCE))
    tokens = np.array(read_shard(train))
    cuts = ref["split_points"]
    for i in range(len(cuts) - 1):  # the same three-way split llm.c was run on
        write_shard(str(tmp_path / f"ts_{i:06d}.bin"), tokens[cuts[i]:cuts[i + 1]])
    patterns = {"train": train, "val": val, "split/ts_*.bin": str(tmp_path / "ts_*.bin")}
    for case in ref["cases"]:
        pattern = patterns[case["pattern"]]
        for rank in range(case["world"]):
            loader = ShardLoader(pattern, case["B"], case["T"], rank, case["world"], bool(case["shuffle"]))
            for n, (file_index, offset, first_input, last_target) in enumerate(case["batches"][str(rank)]):
                x, y = loader.next_batch()
                file_tokens = read_shard(loader.files[file_index])
                assert loader.shard_order[loader.shard_pos] == file_index, (case["name"], rank, n)
                assert (int(x[0, 0]), int(y[-1, -1])) == (first_input, last_target), (case["name"], rank, n)
                window = np.asarray(file_tokens[offset:offset + case["B"] * case["T"] + 1], dtype=np.int64)
                assert np.array_equal(x.flatten().numpy(), window[:-1]), (case["name"], rank, n)
                assert np.array_equal(y.flatten().numpy(), window[1:]), (case["name"], rank, n)


def test_ranks_read_disjoint_slices_of_each_sample():
    r0 = ShardLoader(VAL_SHARD, 2, 16, 0, 2, shuffle=False)
    r1 = ShardLoader(VAL_SHARD, 2, 16, 1, 2, shuffle=False)
    tokens = np.asarray(read_shard(VAL_SHARD), dtype=np.int64)
    for step in range(3):
        (x0, y0), (x1, _) = r0.next_batch(), r1.next_batch()
        base = step * 2 * 16 * 2
        assert np.array_equal(x0.flatten().numpy(), tokens[base:base + 32])
        assert np.array_equal(x1.flatten().numpy(), tokens[base + 32:base + 64])
        assert np.array_equal(y0.flatten().numpy(), tokens[base + 1:base + 33])


def test_state_dict_restores_the_exact_position(tmp_path):
    tokens = np.asarray(read_shard(TRAIN_SHARD))[:60000]
    for i, (a, b) in enumerate([(0, 20000), (20000, 45000), (45000, 60000)]):
        write_shard(str(tmp_path / f"s_{i}.bin"), tokens[a:b])
    pattern = str(tmp_path / "s_*.bin")
    loader = ShardLoader(pattern, 4, 64, 1, 2, shuffle=True)
    per_epoch = loader.samples_per_epoch
    for _ in range(per_epoch + 7):  # into the second epoch
        loader.next_batch()
    state = json.loads(json.dumps(loader.state_dict()))  # survives a round trip through plain JSON
    expected = [loader.next_batch()[0] for _ in range(per_epoch + 5)]  # across shard and epoch boundaries
    resumed = ShardLoader(pattern, 4, 64, 1, 2, shuffle=True)
    resumed.load_state_dict(state)
    for want in expected:
        assert np.array_equal(resumed.next_batch()[0].numpy(), want.numpy())


def _three_shards(tmp_path, n=60000):
    tokens = np.asarray(read_shard(TRAIN_SHARD))[:n]
    for i, (a, b) in enumerate([(0, n // 3), (n // 3, 3 * n // 4), (3 * n // 4, n)]):
        write_shard(str(tmp_path / f"s_{i}.bin"), tokens[a:b])
    return str(tmp_path / "s_*.bin")


def _rows(x, y):
    """A micro-batch as its rows of T+1 tokens."""
    return [tuple(row) for row in np.concatenate([x.numpy(), y.numpy()[:, -1:]], axis=1)]


@pytest.mark.parametrize("world,B,accum", [(1, 8, 1), (1, 2, 4), (4, 1, 2), (2, 4, 1), (8, 1, 1), (1, 16, 1)])
def test_replay_serves_each_step_the_rows_of_the_original_layout(tmp_path, world, B, accum):
    """A stream of 2 ranks x B=2 x accumulation 2 (shuffled), replayed on other layouts: every optimizer step
    gets the same rows, in (micro-step, rank, row) order, across shard and epoch boundaries, and a replay
    restored from its state mid-way goes on identically. (1, 16, 1) takes two stream steps per step, as a
    resume with a larger total batch does."""
    pattern, T = _three_shards(tmp_path), 64
    stream = [ShardLoader(pattern, 2, T, r, 2, shuffle=True) for r in range(2)]
    steps = stream[0].samples_per_epoch + 5  # into the second epoch
    stream_steps = [[row for _ in range(2) for loader in stream for row in _rows(*loader.next_batch())]
                    for _ in range(steps)]
    if world * B * accum == 16:  # two stream steps per step
        stream_steps = [a + b for a, b in zip(stream_steps[::2], stream_steps[1::2])]
    replays = [ReplayLoader(pattern, B, T, r, world, accum, True, stream_B=2, stream_world=2) for r in range(world)]
    for step, want in enumerate(stream_steps):
        if step == 3:  # resume from a checkpoint taken between steps
            states = [json.loads(json.dumps(replay.state_dict())) for replay in replays]
            replays = [ReplayLoader(pattern, B, T, r, world, accum, True, 2, 2) for r in range(world)]
            for replay, state in zip(replays, states):
                replay.load_state_dict(state)
        got = [[] for _ in range(accum * world)]
        for micro in range(accum):
            for r, replay in enumerate(replays):
                got[micro * world + r] = _rows(*replay.next_batch())
        assert [row for chunk in got for row in chunk] == want, f"step {step}"


def test_replay_refuses_a_step_that_is_not_whole_stream_micro_steps(tmp_path):
    with pytest.raises(UserError, match="not a whole number of the data stream's micro-steps of 2x2 rows"):
        ReplayLoader(_three_shards(tmp_path), 3, 64, 0, 1, 1, True, stream_B=2, stream_world=2)


def test_state_from_another_layout_is_refused():
    state = ShardLoader(VAL_SHARD, 4, 64, 0, 1, shuffle=True).state_dict()
    with pytest.raises(UserError, match="layout"):
        ShardLoader(VAL_SHARD, 8, 64, 0, 1, shuffle=True).load_state_dict(state)


def test_write_then_read_round_trip(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 50257, 1000)
    path = str(tmp_path / "x.bin")
    write_shard(path, tokens)
    assert os.path.getsize(path) == HEADER_BYTES + 2 * 1000
    assert read_shard_header(path) == 1000
    assert np.array_equal(np.asarray(read_shard(path)), tokens)
    assert not os.path.exists(path + ".tmp")


def _corrupt(tmp_path, name, header=None, ntok=100, drop=0):
    path = str(tmp_path / name)
    write_shard(path, np.arange(ntok) % 50257)
    data = bytearray(open(path, "rb").read())
    if header:
        for index, value in header.items():
            data[4 * index:4 * index + 4] = np.int32(value).tobytes()
    open(path, "wb").write(bytes(data[:len(data) - drop]))
    return path


@pytest.mark.parametrize("kwargs, message", [
    (dict(header={0: 12345}), r"bad magic 12345, expected 20240520"),
    (dict(header={1: 7}), r"unsupported shard version 7, expected 1"),
    (dict(drop=10), r"header says 100 tokens \(1224 bytes\) but the file has 1214 bytes"),
    (dict(header={2: 500}), r"header says 500 tokens"),
    (dict(header={2: -5}), r"header says -5 tokens, expected a count of 0 or more \(corrupt header\)$"),
    (dict(ntok=0), r"the shard holds no tokens \(its header counts 0 and the file is the 1024-byte header alone\)$"),
])
def test_bad_shards_get_one_line_errors_naming_the_file(tmp_path, kwargs, message):
    path = _corrupt(tmp_path, "bad.bin", **kwargs)
    with pytest.raises(UserError, match=message) as err:
        ShardLoader(path, 1, 8, 0, 1, shuffle=False)
    assert str(err.value).startswith(path) and "\n" not in str(err.value)


def test_file_shorter_than_a_header(tmp_path):
    path = tmp_path / "stub.bin"
    path.write_bytes(b"\x00" * 10)
    with pytest.raises(UserError, match="10 bytes is shorter than the 1024-byte header"):
        ShardLoader(str(path), 1, 8, 0, 1, shuffle=False)


def test_no_file_matches(tmp_path):
    with pytest.raises(UserError, match=r"^-j .*nothing_\*\.bin: no file matches this pattern$"):
        ShardLoader(str(tmp_path / "nothing_*.bin"), 1, 8, 0, 1, shuffle=False, flag="-j")


def test_a_folder_for_its_shards_is_refused_with_the_glob_to_give(tmp_path):
    (tmp_path / "shards").mkdir()
    with pytest.raises(UserError) as err:
        ShardLoader(str(tmp_path / "shards"), 1, 8, 0, 1, shuffle=False)
    assert str(err.value) == (f"-i {tmp_path / 'shards'}: {tmp_path / 'shards'} is a directory; expected token shard "
                              f"files, a glob such as -i '{tmp_path / 'shards' / '*.bin'}'")


def test_shard_shorter_than_one_sample(tmp_path):
    path = _corrupt(tmp_path, "short.bin", ntok=200)
    with pytest.raises(UserError, match=r"200 tokens is shorter than one sample of B\*T\*world\+1 = 257 tokens"):
        ShardLoader(path, 4, 32, 0, 2, shuffle=False)


def _shard_with_a_bad_id(tmp_path, at=700, bad=60000):
    tokens = np.arange(1000) % 50257
    tokens[at] = bad
    path = str(tmp_path / "oov.bin")
    write_shard(path, tokens)
    return path


OOV_MESSAGE = ("{}: the token at index 700 is 60000, expected ids below the model's vocab_size 50257 (a shard "
               "tokenized for another vocabulary, or corrupt)")


def test_token_ids_outside_the_vocabulary_are_refused_as_the_batch_is_cut(tmp_path):
    """The batch that holds the bad id is refused, naming the file and where the id is; the ones before it are
    served (each batch's ids are checked as it is cut, not the whole shard up front)."""
    path = _shard_with_a_bad_id(tmp_path)
    loader = ShardLoader(path, 2, 64, 0, 1, shuffle=False, vocab_size=50257)
    for _ in range(5):  # samples of 128 tokens (+1): index 700 is in the sixth, tokens 640-768
        loader.next_batch()
    with pytest.raises(UserError) as err:
        loader.next_batch()
    assert str(err.value) == OOV_MESSAGE.format(path)


def test_the_val_batches_ids_are_checked_ahead_by_every_rank_alike(tmp_path):
    """check_ahead reads the first batches now (the val loss may first read them after the training, at -v 0):
    index 700 lies in rank 1's part of the third sample, and rank 0 refuses it too, so that no rank goes on alone.
    Batches short of it pass, and the loader is back at its first batch."""
    path = _shard_with_a_bad_id(tmp_path)
    for rank in (0, 1):
        loader = ShardLoader(path, 2, 64, rank, 2, shuffle=False, vocab_size=50257)  # samples of 256 tokens
        with pytest.raises(UserError) as err:
            loader.check_ahead(3)
        assert str(err.value) == OOV_MESSAGE.format(path)
        first = loader.next_batch()
        loader.check_ahead(2)
        assert all(torch.equal(a, b) for a, b in zip(loader.next_batch(), first))


def test_replay_refuses_token_ids_outside_the_vocabulary(tmp_path):
    path = _shard_with_a_bad_id(tmp_path)
    replay = ReplayLoader(path, 4, 64, 0, 1, 1, False, stream_B=2, stream_world=2, vocab_size=50257)
    for _ in range(2):  # steps of 256 tokens: index 700 is in the third
        replay.next_batch()
    with pytest.raises(UserError) as err:
        replay.next_batch()
    assert str(err.value) == OOV_MESSAGE.format(path)
