"""The GPT-2 tokenizer, loaded from the BPE file ds_train ships, so nothing is downloaded at run time.

Documents are encoded as llm.c's data scripts do: EOT (50256) first, then `encode_ordinary(text)`, which
treats any "<|endoftext|>" inside the text as plain text.
"""

import functools
import os

import numpy as np
import tiktoken
from tiktoken.load import load_tiktoken_bpe
from tiktoken_ext.openai_public import r50k_pat_str

BPE_FILE = os.path.join(os.path.dirname(__file__), "assets", "gpt2_tokenizer", "r50k_base.tiktoken")
BPE_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
EOT = 50256


@functools.lru_cache(maxsize=1)
def gpt2_tokenizer() -> tiktoken.Encoding:
    ranks = load_tiktoken_bpe(BPE_FILE, expected_hash=BPE_SHA256)
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT}, explicit_n_vocab=EOT + 1)


def encode_document(text: str) -> np.ndarray:
    """[EOT] + GPT-2 tokens of `text`, as uint16: one document of an llm.c token shard."""
    tokens = gpt2_tokenizer().encode_ordinary(text)
    out = np.empty(len(tokens) + 1, dtype=np.uint16)
    out[0] = EOT
    out[1:] = tokens
    return out


def decode(tokens) -> str:
    return gpt2_tokenizer().decode(list(tokens))
