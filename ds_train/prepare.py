"""Token shards for the reproduction runs: the same tokens, files and names as llm.c's dev/data scripts.

    python -m ds_train.prepare fineweb --version 10B        # Hugging Face, streamed -> data/fineweb10B
    python -m ds_train.prepare edu_fineweb --version 100B   # -> data/edu_fineweb100B
    python -m ds_train.prepare tinyshakespeare              # -> data/tinyshakespeare (offline: the shipped text)
    python -m ds_train.prepare tinystories                  # -> data/tinystories
    python -m ds_train.prepare hellaswag                    # -> data/hellaswag: the jsonl and llm.c's eval .bin
    python -m ds_train.prepare fineweb --input corpus/      # your own .txt / .jsonl / .parquet files

A document is EOT followed by its GPT-2 tokens. FineWeb-style output is cut into shards of --shard_size
tokens (the first is val), a document continuing into the next shard where it does not fit; each shard is
renamed into place only when complete, and a rerun resumes after the last complete one.
"""

import argparse
import glob
import itertools
import json
import multiprocessing
import os
import random
import sys
import time

import numpy as np
from tqdm import tqdm

from ds_train import sources
from ds_train.data import ShardWriter, read_shard_header, write_shard, writable_dir
from ds_train.errors import UserError, usage_error
from ds_train.hellaswag import load_examples, write_eval_file
from ds_train.tokenizer import encode_document

DATASETS = ("fineweb", "edu_fineweb", "tinyshakespeare", "tinystories", "hellaswag")
TINYSHAKESPEARE_VAL_TOKENS = 32768  # llm.c: the first 32768 tokens are val
SHARD_RECORD = {"file": str, "tokens": int, "next_doc": int, "next_token": int}  # NAME.prepare.json's entry per shard


class Tokenizer:
    """Encodes documents on `workers` processes, in order, keeping at most two batches in flight so that a
    streamed source is read only as fast as it is tokenized."""

    def __init__(self, workers: int, batch: int = 4096):
        self.batch = batch
        self.pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.pool:
            self.pool.terminate()

    def map(self, texts):
        texts = iter(texts)
        if self.pool is None:
            yield from map(encode_document, texts)
            return
        batches = iter(lambda: list(itertools.islice(texts, self.batch)), [])
        pending = None
        for batch in batches:
            submitted = self.pool.map_async(encode_document, batch, chunksize=64)
            if pending:
                yield from pending.get()
            pending = submitted
        if pending:
            yield from pending.get()


class Progress:
    """A tqdm bar of tokens (and tokens/s) with the document count and rate beside it; then a summary."""

    def __init__(self, desc: str):
        # delay: nothing is drawn for a run that fails (or finishes) at once, so its error stays one line
        self.bar = tqdm(desc=desc, unit="tok", unit_scale=True, smoothing=0.05, delay=0.5)
        self.docs = self.tokens = 0
        self.start = time.perf_counter()

    def update(self, tokens: int):
        self.docs += 1
        self.tokens += tokens
        self.bar.update(tokens)
        if self.docs % 256 == 0:
            self.bar.set_postfix_str(f"{self.docs:,} docs, {self.docs / self.bar.format_dict['elapsed']:,.0f} docs/s", refresh=False)

    def close(self) -> str:
        self.bar.close()
        seconds = time.perf_counter() - self.start
        return (f"{self.docs:,} documents, {self.tokens:,} tokens in {seconds:.1f} s "
                f"({self.tokens / max(seconds, 1e-9):,.0f} tokens/s)")


def state_problem(state) -> str | None:
    """What is wrong with a loaded NAME.prepare.json, or None: its shape is checked before resuming from it."""
    if not isinstance(state, dict):
        return "not a JSON object"
    if not isinstance(state.get("shards"), list):
        return 'no "shards" list'
    if not isinstance(state.get("complete"), bool):
        return 'no "complete" true/false'
    for i, shard in enumerate(state["shards"]):
        if not (isinstance(shard, dict) and all(type(shard.get(key)) is kind for key, kind in SHARD_RECORD.items())):
            return f"shard entry {i} is not {{{', '.join(f'{key!r}: {kind.__name__}' for key, kind in SHARD_RECORD.items())}}}"
    return None


class ShardedOutput:
    """llm.c's FineWeb layout: shards of exactly shard_size tokens (the last one shorter), the first named val
    and the rest train, a document that does not fit continuing at the start of the next shard.

    After each shard is renamed into place, NAME.prepare.json records it with the position where the next
    shard starts (document index, tokens of that document already written), so a rerun skips the finished
    shards, resumes at that position and writes the same bytes as an uninterrupted run.
    """

    def __init__(self, out_dir: str, name: str, shard_size: int, source):
        self.out_dir, self.name, self.shard_size = out_dir, name, shard_size
        self.state_path = os.path.join(out_dir, f"{name}.prepare.json")
        fresh = {"name": name, "source": source, "shard_size": shard_size, "shards": [], "complete": False}
        self.state = self._load(fresh)
        self.writer = None
        for stale in glob.glob(os.path.join(out_dir, f"{name}_*.bin.tmp")):
            os.remove(stale)  # half-written by an interrupted run

    def _load(self, fresh: dict) -> dict:
        if not os.path.exists(self.state_path):
            return fresh
        try:
            with open(self.state_path, encoding="utf-8") as f:
                state = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise self._damaged(f"not JSON: {e}") from None
        except OSError as e:
            raise UserError(f"{self.state_path}: cannot read: {e.strerror}") from None
        if problem := state_problem(state):
            raise self._damaged(problem)
        for key in ("source", "shard_size"):
            if state.get(key) != fresh[key]:
                raise UserError(f"--output_dir {self.out_dir}: holds a {self.name} prep with {key} {state.get(key)!r}, "
                                f"not {fresh[key]!r}; use another --output_dir or delete that one")
        # keep the recorded shards that are really there, whole; resume after the last of them
        for i, shard in enumerate(state["shards"]):
            if not self._intact(os.path.join(self.out_dir, shard["file"]), shard["tokens"]):
                state["shards"], state["complete"] = state["shards"][:i], False
                break
        return state

    def _damaged(self, what: str) -> UserError:
        return UserError(f"{self.state_path}: damaged ({what}); delete it to start this prep over "
                         f"(its shards are then written again)")

    @staticmethod
    def _intact(path: str, tokens: int) -> bool:
        try:
            return read_shard_header(path) == tokens
        except UserError:  # missing, truncated or overwritten: it gets written again
            return False

    @property
    def complete(self) -> bool:
        return self.state["complete"]

    @property
    def resume_at(self):
        """(next document, tokens of it already written) where this run starts."""
        shards = self.state["shards"]
        return (shards[-1]["next_doc"], shards[-1]["next_token"]) if shards else (0, 0)

    def _shard_path(self, index: int) -> str:
        split = "val" if index == 0 else "train"
        return os.path.join(self.out_dir, f"{self.name}_{split}_{index:06d}.bin")

    def add(self, doc_index: int, tokens: np.ndarray, first_token: int = 0):
        """Write tokens[first_token:] of document `doc_index`."""
        if len(tokens) > self.shard_size:
            raise UserError(f"--shard_size {self.shard_size}: document {doc_index} has {len(tokens)} tokens and a shard "
                            "must be able to hold a whole document; use a larger --shard_size")
        position = first_token
        while position < len(tokens):
            if self.writer is None:
                self.writer = ShardWriter(self._shard_path(len(self.state["shards"])))
            piece = tokens[position:position + self.shard_size - self.writer.tokens]
            self.writer.write(piece)
            position += len(piece)
            if self.writer.tokens == self.shard_size:
                done = position == len(tokens)
                self._close_shard(doc_index + 1 if done else doc_index, 0 if done else position)

    def _close_shard(self, next_doc: int, next_token: int):
        self.writer.close()
        self.state["shards"].append({"file": os.path.basename(self.writer.path), "tokens": self.writer.tokens,
                                     "next_doc": next_doc, "next_token": next_token})
        self.writer = None
        self._save()

    def finish(self, docs_seen: int):
        if self.writer is not None:
            self._close_shard(docs_seen, 0)
        self.state["complete"] = True
        self._save()

    def _save(self):
        with open(self.state_path + ".tmp", "w") as f:
            json.dump(self.state, f, indent=1)
        os.replace(self.state_path + ".tmp", self.state_path)

    def summary(self) -> str:
        shards = self.state["shards"]
        return (f"{len(shards)} shards ({sum(s['tokens'] for s in shards):,} tokens: 1 val, {len(shards) - 1} train) "
                f"in {self.out_dir}")


def prepare_fineweb(args, out_dir: str):
    if args.input:
        files = sources.input_files(args.input)
        documents = sources.local_documents(files)
        source = {"input": os.path.abspath(args.input), "files": [[os.path.basename(f), os.path.getsize(f)] for f in files]}
        where = f"--input {args.input}"
    else:
        documents = sources.fineweb_documents(args.dataset, args.version)
        source = where = f"{sources.FINEWEB_REPOS[args.dataset]}:{sources.FINEWEB_SAMPLES[args.version]}"
    output = ShardedOutput(out_dir, args.dataset, args.shard_size, source)
    if output.complete:
        print(f"already prepared: {output.summary()}")
        return
    next_doc, next_token = output.resume_at
    if next_doc or next_token:
        print(f"resuming after {len(output.state['shards'])} complete shards, at document {next_doc:,}")
    progress = Progress(args.dataset)
    doc_index = next_doc
    with Tokenizer(args.workers) as tokenizer:
        for tokens in tokenizer.map(itertools.islice(documents, next_doc, None)):
            output.add(doc_index, tokens, first_token=next_token if doc_index == next_doc else 0)
            progress.update(len(tokens))
            doc_index += 1
    if doc_index == 0:
        raise UserError(f"{where}: no documents to prepare")
    output.finish(doc_index)
    print(f"done: {progress.close()}; {output.summary()}")


def prepare_tinyshakespeare(args, out_dir: str):
    text_path = args.input or sources.fetch(sources.TINYSHAKESPEARE_URL, os.path.join(out_dir, "tiny_shakespeare.txt"),
                                            shipped=sources.TINYSHAKESPEARE_SHIPPED)
    sections = sources.read_text(text_path).split("\n\n")
    # llm.c: each blank-line-separated section is a document, and all but the last keep their "\n\n"
    documents = [s + "\n\n" if i < len(sections) - 1 else s for i, s in enumerate(sections)]
    progress, pieces = Progress("tinyshakespeare"), []
    with Tokenizer(args.workers) as tokenizer:
        for tokens in tokenizer.map(documents):
            pieces.append(tokens)
            progress.update(len(tokens))
    tokens = np.concatenate(pieces)
    if len(tokens) <= TINYSHAKESPEARE_VAL_TOKENS:
        raise UserError(f"{text_path}: {len(tokens)} tokens; the first {TINYSHAKESPEARE_VAL_TOKENS} are val, so more are needed")
    for split, part in (("val", tokens[:TINYSHAKESPEARE_VAL_TOKENS]), ("train", tokens[TINYSHAKESPEARE_VAL_TOKENS:])):
        write_shard(os.path.join(out_dir, f"tiny_shakespeare_{split}.bin"), part)
    print(f"done: {progress.close()}; tiny_shakespeare_val.bin ({TINYSHAKESPEARE_VAL_TOKENS:,} tokens) and "
          f"tiny_shakespeare_train.bin ({len(tokens) - TINYSHAKESPEARE_VAL_TOKENS:,}) in {out_dir}")


def prepare_tinystories(args, out_dir: str):
    files = sources.tinystories_shards(args.input, out_dir)
    if len(files) < 2:
        raise UserError(f"--input {args.input}: TinyStories needs at least two files (the first is val, the rest train)")
    progress = Progress("tinystories")
    with Tokenizer(args.workers) as tokenizer:
        for split, split_files in (("val", files[:1]), ("train", files[1:])):
            path = os.path.join(out_dir, f"TinyStories_{split}.bin")
            if os.path.exists(path):
                print(f"{path} already exists, skipping")
                continue
            writer = ShardWriter(path)
            for index, file in enumerate(split_files):
                stories = sources.tinystories_stories(file)
                random.Random(1337 + index).shuffle(stories)  # llm.c shuffles each file with this seed
                for tokens in tokenizer.map(s.strip() for s in stories):
                    writer.write(tokens)
                    progress.update(len(tokens))
            writer.close()
            print(f"wrote {writer.tokens:,} tokens to {path}")
    print(f"done: {progress.close()}")


def prepare_hellaswag(args, out_dir: str):
    jsonl = os.path.join(out_dir, "hellaswag_val.jsonl")
    source = args.input or sources.fetch(sources.HELLASWAG_URL, jsonl, shipped=sources.HELLASWAG_SHIPPED)
    examples = load_examples(source)
    sources.copy_text(source, jsonl)
    write_eval_file(os.path.join(out_dir, "hellaswag_val.bin"), examples)
    print(f"done: {len(examples):,} examples in {jsonl} and hellaswag_val.bin (llm.c's eval format)")


RECIPES = {"fineweb": prepare_fineweb, "edu_fineweb": prepare_fineweb, "tinyshakespeare": prepare_tinyshakespeare,
           "tinystories": prepare_tinystories, "hellaswag": prepare_hellaswag}


# the datasets whose --input is one file, and what that file is
ONE_FILE_INPUTS = {"tinyshakespeare": "its text (input.txt)", "hellaswag": "its val .jsonl (or .jsonl.gz)"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ds_train.prepare", allow_abbrev=False,
                                     description="Prepare llm.c token shards (GPT-2 tokens) for training.")
    parser.add_argument("dataset", metavar="DATASET", help=f"one of: {', '.join(DATASETS)}")
    parser.add_argument("--input", metavar="PATH", help="a local source instead of the download: a file or folder of "
                        ".txt / .jsonl / .parquet (TinyStories: its .tar.gz or data*.json; HellaSwag: the .jsonl)")
    parser.add_argument("--output_dir", metavar="DIR", help="default: data/<name>, e.g. data/fineweb10B")
    parser.add_argument("--version", choices=sorted(sources.FINEWEB_SAMPLES), default="10B",
                        help="FineWeb sample: 10B or 100B tokens (fineweb, edu_fineweb)")
    parser.add_argument("--shard_size", type=int, default=10**8, metavar="TOKENS",
                        help="tokens per shard (fineweb, edu_fineweb); default 1e8 as llm.c")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), metavar="N",
                        help="tokenizer processes (default: all cores)")
    parser.error = usage_error
    args = parser.parse_args(argv)
    if args.dataset not in DATASETS:
        raise UserError(f"unknown dataset {args.dataset!r}; expected one of {', '.join(DATASETS)}")
    if args.shard_size < 1:
        raise UserError(f"--shard_size {args.shard_size}: must be at least 1 token")
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: must be at least 1")
    if args.input and args.dataset in ONE_FILE_INPUTS and not os.path.isfile(args.input):  # before --output_dir is made
        what = "is a folder" if os.path.isdir(args.input) else "no such file"
        raise UserError(f"--input {args.input}: {what}; {args.dataset} reads one file, {ONE_FILE_INPUTS[args.dataset]}")
    return args


def default_output_dir(args) -> str:
    if args.dataset in ("fineweb", "edu_fineweb"):
        return os.path.join("data", f"{args.dataset}{args.version}")
    return os.path.join("data", args.dataset)


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        out_dir = args.output_dir or default_output_dir(args)
        writable_dir(out_dir, "--output_dir")
        RECIPES[args.dataset](args, out_dir)
    except UserError as e:
        print(f"ds_train.prepare: error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
