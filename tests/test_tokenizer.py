"""The shipped GPT-2 tokenizer equals tiktoken's own "gpt2" encoding, with no network."""

import os
import subprocess
import sys

from conftest import REPO, shared_path


def test_shipped_bpe_equals_tiktokens_gpt2_encoding():
    cache = shared_path("tokenizer", "tiktoken_cache")
    texts = [shared_path("text", "tinyshakespeare", "input.txt"), shared_path("text", "wikitext-2", "test.txt"),
             shared_path("hellaswag", "hellaswag_val.jsonl")]
    script = (
        "import sys, tiktoken; sys.path.insert(0, %r)\n"
        "from ds_train.tokenizer import gpt2_tokenizer, encode_document, decode, EOT\n"
        "official, ours = tiktoken.get_encoding('gpt2'), gpt2_tokenizer()\n"
        "assert ours.n_vocab == official.n_vocab == 50257 and official.eot_token == EOT\n"
        "for path in sys.argv[1:]:\n"
        "    text = open(path, encoding='utf-8').read()[:300000]\n"
        "    assert ours.encode_ordinary(text) == official.encode_ordinary(text), path\n"
        "    assert decode(encode_document(text)[1:]) == text\n"
        "assert ours.encode('Hello world') == [15496, 995]\n"
        "print('ok')\n" % REPO)
    env = dict(os.environ, TIKTOKEN_CACHE_DIR=cache)  # tiktoken's files, verified by hash, no download
    proc = subprocess.run([sys.executable, "-c", script, *texts], env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
