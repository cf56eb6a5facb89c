"""HellaSwag val: the jsonl examples, their tokens as llm.c renders them, and llm.c's eval .bin file.

An example is a context and four endings; the tokens of ending i are GPT-2's for " " + ending (the space
joins it to the context). llm.c's C eval reads the .bin: a 256-int32 header [20240522, 1, examples,
longest example in bytes], then per example the uint16 stream 65535, example bytes, index, label, 4,
context length, context tokens, and for each ending its length and tokens.
"""

import json
import os
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
                examples.append(_parse(line, f"{path}:{number}"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason})") from None
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
    """The examples of an llm.c eval .bin as Rendered, in file order (checked as llm.c's loader checks)."""
    data = np.fromfile(path, dtype="<u2")
    header = data[:512].view("<i4")
    if len(data) < 512 or header[0] != EVAL_MAGIC or header[1] != EVAL_VERSION:
        raise UserError(f"{path}: not an llm.c eval file (magic {EVAL_MAGIC}, version {EVAL_VERSION})")
    out, pos = [], 512
    for index in range(int(header[2])):
        if data[pos] != START_EXAMPLE or data[pos + 2] != index:
            raise UserError(f"{path}: example {index} is malformed")
        end = pos + int(data[pos + 1]) // 2
        label, count, pos = int(data[pos + 3]), int(data[pos + 4]), pos + 5
        ctx_len = int(data[pos])
        ctx, pos = data[pos + 1:pos + 1 + ctx_len].tolist(), pos + 1 + ctx_len
        endings = []
        for _ in range(count):
            n = int(data[pos])
            endings.append(data[pos + 1:pos + 1 + n].tolist())
            pos += 1 + n
        if pos != end:
            raise UserError(f"{path}: example {index} has the wrong byte count")
        out.append(Rendered(label, ctx, endings))
    return out
