"""python -m ds_train.prepare: llm.c's tokens and files, every document exactly once, resumable, clear errors."""

import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from conftest import ASSETS, MAIN, REPO, CPU_CONFIG, TINY, child_env, parse, shared_path
from ds_train import prepare, sources
from ds_train.data import read_shard, read_shard_header
from ds_train.hellaswag import load_examples, read_eval_file, render
from ds_train.tokenizer import EOT, gpt2_tokenizer


def run_prepare(capsys, *args) -> str:
    assert prepare.main([*map(str, args)]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def prepare_error(capsys, *args) -> str:
    assert prepare.main([*map(str, args)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ds_train.prepare: error: "), err
    return err.strip()[len("ds_train.prepare: error: "):]


def expected_tokens(documents) -> np.ndarray:
    """llm.c's document encoding, computed here directly with tiktoken."""
    enc = gpt2_tokenizer()
    return np.concatenate([np.array([EOT] + enc.encode_ordinary(d), dtype=np.uint16) for d in documents])


# ---------------------------------------------------------------------------------------------- tinyshakespeare

def test_tinyshakespeare_download_is_byte_identical_to_llmc(tmp_path, capsys, monkeypatch):
    """The download code, fed the canonical file through a file:// URL, ends in llm.c's exact shards."""
    text = shared_path("text", "tinyshakespeare", "input.txt")
    monkeypatch.setattr(sources, "TINYSHAKESPEARE_URL", f"file://{text}")
    out = run_prepare(capsys, "tinyshakespeare", "--output_dir", tmp_path, "--workers", 2)
    assert "downloading file://" in out and "note:" not in out
    for split in ("val", "train"):
        ours = (tmp_path / f"tiny_shakespeare_{split}.bin").read_bytes()
        assert ours == open(shared_path("llmc", "tinyshakespeare", f"tiny_shakespeare_{split}.bin"), "rb").read()


def test_tinyshakespeare_offline_falls_back_to_the_shipped_text_and_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sources, "TINYSHAKESPEARE_URL", f"file://{tmp_path}/not_there.txt")
    out = run_prepare(capsys, "tinyshakespeare", "--output_dir", tmp_path / "out", "--workers", 1)
    assert "note: cannot download" in out and "using the copy shipped with ds_train" in out
    for split in ("val", "train"):  # the shipped shards are llm.c's bytes (ds_train/assets/README.md)
        shipped = os.path.join(ASSETS, "tinyshakespeare", f"tiny_shakespeare_{split}.bin")
        assert (tmp_path / "out" / f"tiny_shakespeare_{split}.bin").read_bytes() == open(shipped, "rb").read()


def test_tinyshakespeare_from_a_local_file(tmp_path, capsys):
    text = "\n\n".join(f"SPEAKER {i}:\nSome words, number {i}." for i in range(4000))
    (tmp_path / "play.txt").write_text(text)
    run_prepare(capsys, "tinyshakespeare", "--input", tmp_path / "play.txt", "--output_dir", tmp_path)
    sections = text.split("\n\n")
    tokens = expected_tokens([s + "\n\n" for s in sections[:-1]] + [sections[-1]])
    assert np.array_equal(read_shard(str(tmp_path / "tiny_shakespeare_val.bin")), tokens[:32768])
    assert np.array_equal(read_shard(str(tmp_path / "tiny_shakespeare_train.bin")), tokens[32768:])


# ---------------------------------------------------------------------------------------------- fineweb

def make_corpus(folder, docs_per_file=(300, 250)):
    """A local FineWeb-like corpus from real text: a parquet file and a jsonl file, rows with a "text" field."""
    text = open(shared_path("text", "wikitext-2", "valid.txt")).read()
    docs = [d.strip() for d in text.split("\n \n") if d.strip()]
    first, second = docs[:docs_per_file[0]], docs[docs_per_file[0]:sum(docs_per_file)]
    os.makedirs(folder, exist_ok=True)
    pq.write_table(pa.table({"text": first, "url": ["x"] * len(first)}), os.path.join(folder, "a_000.parquet"))
    with open(os.path.join(folder, "b_001.jsonl"), "w") as f:
        for d in second:
            f.write(json.dumps({"text": d, "id": 1}) + "\n")
    return first + second


def test_fineweb_shards_from_a_local_corpus(tmp_path, capsys):
    docs = make_corpus(tmp_path / "corpus")
    shard_size = 20000
    out = run_prepare(capsys, "fineweb", "--input", tmp_path / "corpus", "--output_dir", tmp_path / "out",
                      "--shard_size", shard_size, "--workers", 2)
    tokens = expected_tokens(docs)
    count = -(-len(tokens) // shard_size)
    names = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "out" / "*.bin")))
    assert names == ["fineweb_train_%06d.bin" % i for i in range(1, count)] + ["fineweb_val_000000.bin"]
    paths = [str(tmp_path / "out" / ("fineweb_val_000000.bin" if i == 0 else "fineweb_train_%06d.bin" % i)) for i in range(count)]
    sizes = [read_shard_header(p) for p in paths]
    assert sizes[:-1] == [shard_size] * (count - 1) and 0 < sizes[-1] <= shard_size
    # every document's tokens exactly once, in order, across the shard boundaries
    assert np.array_equal(np.concatenate([read_shard(p) for p in paths]), tokens)
    assert f"{len(docs):,} documents, {len(tokens):,} tokens" in out and f"{count} shards" in out
    rerun = run_prepare(capsys, "fineweb", "--input", tmp_path / "corpus", "--output_dir", tmp_path / "out",
                        "--shard_size", shard_size)
    assert rerun.startswith("already prepared")


def test_edu_fineweb_names_and_a_folder_of_txt_files(tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    for i in range(3):
        (tmp_path / "docs" / f"{i}.txt").write_text(f"document number {i} " * 50)
    run_prepare(capsys, "edu_fineweb", "--input", tmp_path / "docs", "--output_dir", tmp_path / "out", "--shard_size", 250)
    assert sorted(os.listdir(tmp_path / "out")) == ["edu_fineweb.prepare.json", "edu_fineweb_train_000001.bin",
                                                    "edu_fineweb_val_000000.bin"]
    tokens = expected_tokens([f"document number {i} " * 50 for i in range(3)])
    assert np.array_equal(np.concatenate([read_shard(str(tmp_path / "out" / f)) for f in
                                          ("edu_fineweb_val_000000.bin", "edu_fineweb_train_000001.bin")]), tokens)


def test_a_killed_prep_resumes_to_the_same_bytes(tmp_path):
    make_corpus(tmp_path / "corpus", docs_per_file=(600, 550))
    args = ["fineweb", "--input", tmp_path / "corpus", "--shard_size", 3000]
    cmd = lambda out, workers: [sys.executable, "-m", "ds_train.prepare", *map(str, args), "--output_dir", str(out),
                                "--workers", str(workers)]
    subprocess.run(cmd(tmp_path / "whole", 1), cwd=REPO, check=True, capture_output=True)
    victim = subprocess.Popen(cmd(tmp_path / "killed", 1), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "fineweb.prepare.json"
    deadline = time.time() + 60
    while time.time() < deadline and not (state.exists() and len(json.loads(state.read_text())["shards"]) >= 5):
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not json.loads(state.read_text())["complete"]  # it really was cut short
    resumed = subprocess.run(cmd(tmp_path / "killed", 2), cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0 and "resuming after" in resumed.stdout
    whole = sorted(os.listdir(tmp_path / "whole"))
    assert sorted(os.listdir(tmp_path / "killed")) == whole  # no .tmp left
    for name in whole:
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_a_missing_or_damaged_shard_is_rewritten(tmp_path, capsys):
    make_corpus(tmp_path / "corpus")
    args = ["fineweb", "--input", tmp_path / "corpus", "--output_dir", tmp_path / "out", "--shard_size", 20000]
    run_prepare(capsys, *args)
    before = {p: open(p, "rb").read() for p in glob.glob(str(tmp_path / "out" / "*"))}
    damaged = tmp_path / "out" / "fineweb_train_000003.bin"
    damaged.write_bytes(damaged.read_bytes()[:-100])
    (tmp_path / "out" / "fineweb_train_000005.bin").unlink()
    assert "resuming after 3 complete shards" in run_prepare(capsys, *args)
    assert {p: open(p, "rb").read() for p in glob.glob(str(tmp_path / "out" / "*"))} == before


def test_the_trainer_trains_on_prepared_shards(tmp_path, capsys):
    make_corpus(tmp_path / "corpus")
    run_prepare(capsys, "fineweb", "--input", tmp_path / "corpus", "--output_dir", tmp_path / "fw", "--shard_size", 30000)
    args = [*TINY, "-b", 8, "-x", 6, "-v", 3, "-m", 2, "-l", "3e-3",
            "-i", tmp_path / "fw" / "fineweb_train_*.bin", "-j", tmp_path / "fw" / "fineweb_val_*.bin"]
    proc = subprocess.run([sys.executable, MAIN, "--ds_config", CPU_CONFIG, *map(str, args)],
                          cwd=REPO, env=child_env(threads=2), capture_output=True, text=True)
    run = parse(proc).check()
    assert len(run.losses) == 6 and run.val_losses[-1] < run.val_losses[0]
    assert "fineweb_train_*.bin" in run.stdout


# ---------------------------------------------------------------------------------------------- tinystories

def test_tinystories_splits_and_shuffles_as_llmc(tmp_path, capsys):
    text = open(shared_path("text", "tinystories", "tinystories_val_head.txt")).read()
    stories = [s for s in text.split("\n\n") if s.strip()][:900]
    (tmp_path / "shards").mkdir()
    files = [stories[i::3] for i in range(3)]
    for i, part in enumerate(files):  # llm.c's TinyStories_all_data/dataNN.json layout
        json.dump([{"story": s, "source": "GPT-4"} for s in part], open(tmp_path / "shards" / f"data{i:02d}.json", "w"))
    run_prepare(capsys, "tinystories", "--input", tmp_path / "shards", "--output_dir", tmp_path / "out")

    def llmc_order(part, index):  # llm.c: shuffle each file with random.Random(1337 + its index in the split)
        part = list(part)
        random.Random(1337 + index).shuffle(part)
        return [s.strip() for s in part]
    val = expected_tokens(llmc_order(files[0], 0))
    train = expected_tokens(llmc_order(files[1], 0) + llmc_order(files[2], 1))
    assert np.array_equal(read_shard(str(tmp_path / "out" / "TinyStories_val.bin")), val)
    assert np.array_equal(read_shard(str(tmp_path / "out" / "TinyStories_train.bin")), train)


# ---------------------------------------------------------------------------------------------- hellaswag

def test_hellaswag_jsonl_and_llmc_eval_file(tmp_path, capsys, monkeypatch):
    source = shared_path("hellaswag", "hellaswag_val.jsonl")
    monkeypatch.setattr(sources, "HELLASWAG_URL", f"file://{source}")
    run_prepare(capsys, "hellaswag", "--output_dir", tmp_path)
    assert (tmp_path / "hellaswag_val.jsonl").read_bytes() == open(source, "rb").read()
    examples = [json.loads(line) for line in open(source)]
    rendered = read_eval_file(str(tmp_path / "hellaswag_val.bin"))
    assert len(rendered) == len(examples) == 10042
    header = np.fromfile(str(tmp_path / "hellaswag_val.bin"), dtype="<i4", count=4)
    enc = gpt2_tokenizer()
    longest = 0
    for example, r in zip(examples, rendered):
        assert r.label == example["label"] and r.ctx_tokens == enc.encode(example["ctx"])
        assert r.ending_tokens == [enc.encode(" " + e) for e in example["endings"]]
        longest = max(longest, 2 * (6 + len(r.ctx_tokens) + sum(1 + len(e) for e in r.ending_tokens)))
    assert header.tolist() == [20240522, 1, 10042, longest]


def test_hellaswag_offline_uses_the_shipped_copy(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sources, "HELLASWAG_URL", f"file://{tmp_path}/missing.jsonl")
    out = run_prepare(capsys, "hellaswag", "--output_dir", tmp_path / "hs")
    assert "using the copy shipped with ds_train" in out
    examples = load_examples(str(tmp_path / "hs" / "hellaswag_val.jsonl"))
    assert len(examples) == 10042 and render(examples[0]).ending_tokens == read_eval_file(str(tmp_path / "hs" / "hellaswag_val.bin"))[0].ending_tokens


# ---------------------------------------------------------------------------------------------- bad input

def test_bad_input_gets_one_line_errors(tmp_path, capsys):
    out = tmp_path / "out"
    assert prepare_error(capsys, "openwebtext") == "unknown dataset 'openwebtext'; expected one of fineweb, edu_fineweb, tinyshakespeare, tinystories, hellaswag"
    (tmp_path / "empty.jsonl").write_text("")
    assert prepare_error(capsys, "fineweb", "--input", tmp_path / "empty.jsonl", "--output_dir", out) == \
        f"--input {tmp_path / 'empty.jsonl'}: no documents to prepare"
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    assert prepare_error(capsys, "fineweb", "--input", tmp_path / "latin1.txt", "--output_dir", out / "a") == \
        f"{tmp_path / 'latin1.txt'}: not UTF-8 text (byte 3: invalid continuation byte)"
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "\xff\xfe"}\n')
    assert prepare_error(capsys, "fineweb", "--input", tmp_path / "bad.jsonl", "--output_dir", out / "b").startswith(
        f"{tmp_path / 'bad.jsonl'}: not UTF-8 text")
    (tmp_path / "nofield.jsonl").write_text('{"content": "x"}\n')
    assert "rows have no \"text\" field (fields: content)" in prepare_error(
        capsys, "fineweb", "--input", tmp_path / "nofield.jsonl", "--output_dir", out / "c")
    assert prepare_error(capsys, "fineweb", "--input", tmp_path / "nowhere", "--output_dir", out / "d") == \
        f"--input {tmp_path / 'nowhere'}: no such file or folder"
    (tmp_path / "emptydir").mkdir()
    assert "no .txt / .jsonl / .parquet files in this folder" in prepare_error(
        capsys, "fineweb", "--input", tmp_path / "emptydir", "--output_dir", out / "e")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert prepare_error(capsys, "hellaswag", "--output_dir", blocker / "sub").startswith(f"--output_dir {blocker / 'sub'}: cannot write there")
    assert prepare_error(capsys, "hellaswag", "--output_dir", blocker) == f"--output_dir {blocker}: is a file, expected a directory"
    (tmp_path / "long.txt").write_text("word " * 500)
    length = len(expected_tokens(["word " * 500]))
    assert prepare_error(capsys, "fineweb", "--input", tmp_path / "long.txt", "--output_dir", out / "f", "--shard_size", 100) == \
        f"--shard_size 100: document 0 has {length} tokens and a shard must be able to hold a whole document; use a larger --shard_size"
    assert prepare_error(capsys, "fineweb", "--shard_size", 0) == "--shard_size 0: must be at least 1 token"
    assert prepare_error(capsys, "fineweb", "--version", "1T").startswith("argument --version: invalid choice: '1T'")
    (tmp_path / "hs.jsonl").write_text('{"ctx": "a", "endings": ["b", "c"], "label": 0}\n')
    assert prepare_error(capsys, "hellaswag", "--input", tmp_path / "hs.jsonl", "--output_dir", out / "g") == \
        f"{tmp_path / 'hs.jsonl'}:1: expected a HellaSwag example with a \"ctx\" string, 4 \"endings\" and a \"label\" 0-3"
    (tmp_path / "one").mkdir()
    json.dump([{"story": "x"}], open(tmp_path / "one" / "data00.json", "w"))
    assert "needs at least two files" in prepare_error(capsys, "tinystories", "--input", tmp_path / "one", "--output_dir", out / "h")
    # the one-file datasets: a folder or a missing file is said before --output_dir is made
    for dataset, reads in (("tinyshakespeare", "its text (input.txt)"), ("hellaswag", "its val .jsonl (or .jsonl.gz)")):
        for given, what in ((tmp_path / "emptydir", "is a folder"), (tmp_path / "nowhere", "no such file")):
            assert prepare_error(capsys, dataset, "--input", given, "--output_dir", out / "i") == \
                f"--input {given}: {what}; {dataset} reads one file, {reads}"
    assert not (out / "i").exists()


def test_a_prep_with_other_settings_is_not_mixed_into_an_output_dir(tmp_path, capsys):
    (tmp_path / "doc.txt").write_text("hello world " * 100)
    run_prepare(capsys, "fineweb", "--input", tmp_path / "doc.txt", "--output_dir", tmp_path / "out", "--shard_size", 1000)
    assert "holds a fineweb prep with shard_size 1000, not 2000" in prepare_error(
        capsys, "fineweb", "--input", tmp_path / "doc.txt", "--output_dir", tmp_path / "out", "--shard_size", 2000)


def test_help():
    proc = subprocess.run([sys.executable, "-m", "ds_train.prepare", "--help"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and "--shard_size TOKENS" in proc.stdout and "tinystories" in proc.stdout


def test_damaged_archives_gzip_files_and_prep_records_get_one_line_errors(tmp_path, capsys):
    out = tmp_path / "out"
    (tmp_path / "doc.txt").write_text("hello world " * 100)
    fineweb = ["fineweb", "--input", tmp_path / "doc.txt", "--output_dir", out, "--shard_size", 1000]
    run_prepare(capsys, *fineweb)
    record = out / "fineweb.prepare.json"
    good_record = json.loads(record.read_text())
    record.write_text('{"name": "fineweb", "sour')  # cut short
    assert prepare_error(capsys, *fineweb) == (f"{record}: damaged (not JSON: Unterminated string starting at: line 1 "
                                               "column 21 (char 20)); delete it to start this prep over (its shards are then written again)")
    record.write_text(json.dumps({k: v for k, v in good_record.items() if k != "shards"}))
    assert prepare_error(capsys, *fineweb) == \
        f"{record}: damaged (no \"shards\" list); delete it to start this prep over (its shards are then written again)"
    record.unlink()
    assert run_prepare(capsys, *fineweb).startswith("done:")

    # a .tar.gz that is not one, and a real one cut short: nothing half-unpacked stays behind
    (tmp_path / "fake.tar.gz").write_text("not an archive")
    assert prepare_error(capsys, "tinystories", "--input", tmp_path / "fake.tar.gz", "--output_dir", out / "a") == \
        f"{tmp_path / 'fake.tar.gz'}: not a readable .tar.gz (not a gzip file); expected TinyStories_all_data.tar.gz"
    (tmp_path / "shards").mkdir()
    rng = random.Random(0)
    for i in range(2):
        json.dump([{"story": " ".join(str(rng.random()) for _ in range(50))} for _ in range(300)],
                  open(tmp_path / "shards" / f"data{i:02d}.json", "w"))
    subprocess.run(["tar", "czf", str(tmp_path / "all.tar.gz"), "-C", str(tmp_path / "shards"), "."], check=True)
    (tmp_path / "cut.tar.gz").write_bytes((tmp_path / "all.tar.gz").read_bytes()[:100000])
    assert prepare_error(capsys, "tinystories", "--input", tmp_path / "cut.tar.gz", "--output_dir", out / "b") == \
        (f"{tmp_path / 'cut.tar.gz'}: not a readable .tar.gz (Compressed file ended before the end-of-stream marker was "
         "reached); expected TinyStories_all_data.tar.gz")
    assert os.listdir(out / "a") == os.listdir(out / "b") == []

    # gzipped text cut short: the play, and HellaSwag's jsonl (its whole gzip stream is read line by line)
    play = open(sources.TINYSHAKESPEARE_SHIPPED, "rb").read()
    (tmp_path / "play.txt.gz").write_bytes(play[:len(play) // 2])
    assert prepare_error(capsys, "tinyshakespeare", "--input", tmp_path / "play.txt.gz", "--output_dir", out / "c") == \
        f"{tmp_path / 'play.txt.gz'}: cannot read: truncated gzip file: Compressed file ended before the end-of-stream marker was reached"
    hellaswag = open(sources.HELLASWAG_SHIPPED, "rb").read()
    (tmp_path / "hs.jsonl.gz").write_bytes(hellaswag[:len(hellaswag) // 2])
    assert prepare_error(capsys, "hellaswag", "--input", tmp_path / "hs.jsonl.gz", "--output_dir", out / "d") == \
        f"{tmp_path / 'hs.jsonl.gz'}: cannot read: truncated gzip file: Compressed file ended before the end-of-stream marker was reached"


def test_a_broken_jsonl_is_one_line_on_stderr(tmp_path):
    """The datasets library logs its own error line before raising; ds_train's line is the only one."""
    (tmp_path / "broken.jsonl").write_text("this is not json\n")
    proc = subprocess.run([sys.executable, "-m", "ds_train.prepare", "fineweb", "--input", str(tmp_path / "broken.jsonl"),
                           "--output_dir", str(tmp_path / "out"), "--workers", "1"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr == \
        f"ds_train.prepare: error: {tmp_path / 'broken.jsonl'}: cannot read: ArrowInvalid: JSON parse error: Invalid value. in row 0\n"
