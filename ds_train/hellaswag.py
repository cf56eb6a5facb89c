"""HellaSwag val: the jsonl examples, their tokens as llm.c renders them, and llm.c's eval .bin file.

An example is a context and four endings; the tokens of ending i are GPT-2's for " " + ending (the space
joins it to the context). llm.c's C eval reads the .bin: a 256-int32 header [20240522, 1, examples,
longest example in bytes], then per example the uint16 stream 65535, example bytes, index, label, 4,
context length, context tokens, and for each ending its length and tokens.
"""

import json
import os
import zlib
from dataclasses import dataclass

import numpy as np

from ds_train.errors import UserError
from ds_train.sources import open_text
from ds_train.tokenizer import gpt2_tokenizer

EVAL_MAGIC = 20240522
EVAL_VERSION = 1
START_EXAMPLE = 2**16 - 1


@dataclass(frozen=True)
class Example:
    ctx: str
    endings: tuple
    label: int


@dataclass(frozen=True)
class Rendered:
    label: int
    ctx_tokens: list
    ending_tokens: list  # four lists


def load_examples(path: str) -> list:
    """The examples of a HellaSwag jsonl file (optionally gzipped), each line checked."""
    examples = []
    try:
        with open_text(path) as f:
            for number, line in enumerate(f, start=1):
                if line.strip():  # a blank line (a trailing newline too many) holds no example
                    examples.append(_parse(line, f"{path}:{number}"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason})") from None
    except zlib.error as e:  # damaged deflate data (a .gz cut short is an OSError from sources.open_text)
        raise UserError(f"{path}: the gzip data is damaged ({e}); expected a whole .gz file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    if not examples:
        raise UserError(f"{path}: no examples")
    return examples


def _parse(line: str, where: str) -> Example:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: invalid JSON ({e.msg})") from None
    ctx, endings, label = row.get("ctx"), row.get("endings"), row.get("label")
    if not (isinstance(ctx, str) and isinstance(endings, list) and len(endings) == 4
            and all(isinstance(e, str) for e in endings) and isinstance(label, int) and 0 <= label < 4):
        raise UserError(f"{where}: expected a HellaSwag example with a \"ctx\" string, 4 \"endings\" and a \"label\" 0-3")
    return Example(ctx, tuple(endings), label)


def render(example: Example) -> Rendered:
    enc = gpt2_tokenizer()
    return Rendered(example.label, enc.encode_ordinary(example.ctx),
                    [enc.encode_ordinary(" " + ending) for ending in example.endings])


def write_eval_file(path: str, examples: list):
    """llm.c's eval .bin for `examples`, written through a temporary file."""
    stream, longest = [], 0
    for index, example in enumerate(examples):
        r = render(example)
        body = [START_EXAMPLE, 0, index, r.label, len(r.ending_tokens), len(r.ctx_tokens), *r.ctx_tokens]
        for tokens in r.ending_tokens:
            body += [len(tokens), *tokens]
        body[1] = 2 * len(body)
        if body[1] >= 2**16:
            raise UserError(f"{path}: example {index} needs {body[1]} bytes, more than the format's 65535")
        longest = max(longest, body[1])
        stream += body
    header = np.zeros(256, dtype="<i4")
    header[:4] = (EVAL_MAGIC, EVAL_VERSION, len(examples), longest)
    with open(path + ".tmp", "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(stream, dtype="<u2").tobytes())
    os.replace(path + ".tmp", path)


def load_rendered(path: str) -> list:
    """HellaSwag as token lists, from the jsonl (optionally gzipped) or from llm.c's eval .bin."""
    if path.endswith(".bin"):
        return read_eval_file(path)
    return [render(example) for example in load_examples(path)]


def read_eval_file(path: str) -> list:
    """The examples of an llm.c eval .bin as Rendered, in file order: each one checked as llm.c's loader checks
    it, and against the end of the file (a truncated file is named, not read past)."""
    try:
        raw = open(path, "rb").read()
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror}") from None
    data = np.frombuffer(raw[:len(raw) // 2 * 2], dtype="<u2")
    header = data[:512].view("<i4") if len(data) >= 512 else None
    if header is None or header[0] != EVAL_MAGIC or header[1] != EVAL_VERSION:
        found = f"magic {header[0]}, version {header[1]}" if header is not None else f"{len(raw)} bytes, shorter than its header"
        raise UserError(f"{path}: not an llm.c eval file (expected magic {EVAL_MAGIC}, version {EVAL_VERSION}; found {found})")
    count = int(header[2])
    if count < 1:
        raise UserError(f"{path}: header lists {count} examples, expected 1 or more")
    out, pos = [], 512
    for index in range(count):
        if pos + 5 > len(data) or pos + int(data[pos + 1]) // 2 > len(data):
            raise UserError(f"{path}: the file ends inside example {index} of the {count} its header lists "
                            f"({len(raw)} bytes: truncated?)")
        if data[pos] != START_EXAMPLE or data[pos + 2] != index:
            raise UserError(f"{path}: example {index} is malformed")
        end = pos + int(data[pos + 1]) // 2
        label, endings = int(data[pos + 3]), int(data[pos + 4])
        if endings != 4 or label >= 4:
            raise UserError(f"{path}: example {index} has {endings} endings and label {label}, expected 4 endings "
                            "and a label 0-3")
        body, at, parts = data[pos + 5:end], 0, []
        for _ in range(5):  # the context, then the four endings: each its length, then its tokens
            if at >= len(body) or at + 1 + int(body[at]) > len(body):
                raise UserError(f"{path}: example {index} has the wrong byte count")
            parts.append(body[at + 1:at + 1 + int(body[at])].tolist())
            at += 1 + int(body[at])
        if at != len(body):
            raise UserError(f"{path}: example {index} has the wrong byte count")
        out.append(Rendered(label, parts[0], parts[1:]))
        pos = end
    if 2 * pos != len(raw):
        raise UserError(f"{path}: {len(raw) - 2 * pos} bytes follow the {count} examples its header lists, "
                        "expected none (corrupt header?)")
    return out


def check_fits(examples: list, path: str, model, model_flag: str):
    """Every example must fit `model` (a GPTConfig): its context and longest ending in block_size + 1 tokens
    (the forward sees all of them but the last, which is only predicted), its ids below vocab_size (an eval
    .bin holds any uint16)."""
    for index, example in enumerate(examples):
        where = f"{path}: example {index}" if path.endswith(".bin") else f"{path}:{index + 1}"
        rows = [example.ctx_tokens + ending for ending in example.ending_tokens]
        longest = max(map(len, rows))
        if longest > model.block_size + 1:
            raise UserError(f"{where}: context and ending are {longest} tokens, more than the {model.block_size + 1} "
                            f"that the model ({model_flag}) can score with its context of {model.block_size} tokens")
        top = max(max(row, default=0) for row in rows)
        if top >= model.vocab_size:
            raise UserError(f"{where}: token id {top}, expected ids below the model's vocab_size {model.vocab_size} "
                            f"({model_flag})")
