"""Tokenization throughput of `python -m ds_train.prepare` on a few MB of real text, 1 process vs all cores.

    python bench/prepare_throughput.py [--text_dir ../shared/data/text] [--repeat 2]

Every .txt under --text_dir (default: ../shared/data/text; the shipped tinyshakespeare otherwise) is cut at
blank lines into documents of at least 3 KB (whole paragraphs), written as one jsonl file and
prepared as `fineweb --input` through the real code path (streaming read, tokenizer pool, sharding). It prints
tokens/s for each process count, the speed-up, and what a FineWeb 10B prep (about 10 billion GPT-2 tokens)
would take at that rate, tokenization alone (the Hugging Face download is separate).
"""

import argparse
import glob
import gzip
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ds_train import prepare  # noqa: E402
from ds_train.data import read_shard_header  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINEWEB_10B_TOKENS = 10e9


def documents(text_dir: str, size: int = 3000) -> list:
    paths = sorted(glob.glob(os.path.join(text_dir, "**", "*.txt"), recursive=True))
    if not paths:  # no ../shared: the text ds_train ships
        texts = [gzip.open(os.path.join(REPO, "ds_train", "assets", "tinyshakespeare", "input.txt.gz"), "rt").read()]
    else:
        texts = [open(p, encoding="utf-8").read() for p in paths]
    docs, current = [], ""
    for text in texts:
        for paragraph in text.split("\n\n"):
            current += paragraph + "\n\n"
            if len(current) >= size:
                docs.append(current)
                current = ""
    return docs + ([current] if current else [])


def timed_prep(corpus: str, out: str, workers: int):
    start = time.perf_counter()
    assert prepare.main(["fineweb", "--input", corpus, "--output_dir", out, "--workers", str(workers)]) == 0
    seconds = time.perf_counter() - start
    tokens = sum(read_shard_header(p) for p in glob.glob(os.path.join(out, "*.bin")))
    return tokens, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text_dir", default=os.path.join(os.path.dirname(REPO), "shared", "data", "text"))
    parser.add_argument("--repeat", type=int, default=2, help="copies of the text, for a steadier rate")
    args = parser.parse_args()
    docs = documents(args.text_dir) * args.repeat
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.jsonl")
        with open(corpus, "w") as f:
            for d in docs:
                f.write(json.dumps({"text": d}) + "\n")
        megabytes = os.path.getsize(corpus) / 1e6
        for workers in sorted({1, os.cpu_count()}):
            tokens, seconds = timed_prep(corpus, os.path.join(tmp, f"out{workers}"), workers)
            rows.append((workers, tokens, seconds, tokens / seconds))
    print(f"\n{len(docs):,} documents, {megabytes:.1f} MB of text, on {os.cpu_count()} cores")
    print(f"{'processes':>9} {'tokens':>12} {'seconds':>8} {'tokens/s':>10} {'speed-up':>8} {'FineWeb 10B at this rate':>25}")
    for workers, tokens, seconds, rate in rows:
        hours = FINEWEB_10B_TOKENS / rate / 3600
        print(f"{workers:>9} {tokens:>12,} {seconds:>8.2f} {rate:>10,.0f} {rate / rows[0][3]:>7.2f}x {hours:>20.1f} hours")


if __name__ == "__main__":
    main()
