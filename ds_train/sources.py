"""Where prepared datasets come from: downloads (falling back, with a note, to the copy ds_train ships),
Hugging Face datasets streamed row by row, and local files (.txt, .jsonl, .parquet, llm.c's TinyStories .json).

Everything here yields plain text documents; tokenizing and sharding them is prepare.py's job.
"""

import glob
import gzip
import io
import itertools
import json
import logging
import os
import shutil
import tarfile
import urllib.request
import zlib

from tqdm import tqdm

from ds_train.errors import UserError

ASSETS = os.path.join(os.path.dirname(__file__), "assets")
TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHIPPED = os.path.join(ASSETS, "tinyshakespeare", "input.txt.gz")
HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
HELLASWAG_SHIPPED = os.path.join(ASSETS, "hellaswag", "hellaswag_val.jsonl.gz")
TINYSTORIES_REPO, TINYSTORIES_FILE = "roneneldan/TinyStories", "TinyStories_all_data.tar.gz"
FINEWEB_REPOS = {"fineweb": "HuggingFaceFW/fineweb", "edu_fineweb": "HuggingFaceFW/fineweb-edu"}
FINEWEB_SAMPLES = {"10B": "sample-10BT", "100B": "sample-100BT"}
TEXT_KINDS = (".txt", ".jsonl", ".parquet")


class StrictGzipFile(gzip.GzipFile):
    """A gzip file that reports being cut short as the OSError it raises for other damage (BadGzipFile), not
    as EOFError, so that every reader here, which says "cannot read" for an OSError, says it for that too."""

    def read(self, size=-1):
        try:
            return super().read(size)
        except EOFError as e:
            raise gzip.BadGzipFile(f"truncated gzip file: {e}") from None

    def read1(self, size=-1):  # what a text wrapper reads a line at a time with
        try:
            return super().read1(size)
        except EOFError as e:
            raise gzip.BadGzipFile(f"truncated gzip file: {e}") from None


def open_text(path: str):
    """A text file, gzip-compressed or not, decoded strictly as UTF-8."""
    return io.TextIOWrapper(StrictGzipFile(path), encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")


def read_text(path: str) -> str:
    try:
        with open_text(path) as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None


def download(url: str, dest: str) -> str:
    """Stream `url` (http(s) or file://) to `dest` with a progress bar; `dest` appears only when complete."""
    tmp = dest + ".tmp"
    with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=os.path.basename(dest)) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
    os.replace(tmp, dest)
    return dest


def fetch(url: str, dest: str, shipped: str = None) -> str:
    """`dest` if it is already there; else download it; offline, the shipped copy (said out loud) or an error."""
    if os.path.exists(dest):
        print(f"{dest} already exists, skipping the download")
        return dest
    try:
        print(f"downloading {url} to {dest}")
        return download(url, dest)
    except OSError as e:
        reason = getattr(e, "reason", None) or e.strerror or e
        if shipped is None:
            raise UserError(f"cannot download {url} ({reason}); pass --input with a local copy") from None
        print(f"note: cannot download {url} ({reason}); using the copy shipped with ds_train, {shipped}")
        return shipped


def hf_documents(load_args: dict, field: str, what: str):
    """Rows of a Hugging Face dataset, streamed (nothing is stored whole on disk), as their `field` text.

    The Hub (path="HuggingFaceFW/fineweb", name="sample-10BT") and local files (path="parquet"/"json",
    data_files=[...]) go through this same code.
    """
    import datasets

    datasets.disable_progress_bars()
    # the json loader logs each error just before raising it; the raise is reported below, in one line
    json_log = logging.getLogger("datasets.packaged_modules.json.json")
    json_level = json_log.level
    json_log.setLevel(logging.CRITICAL)
    try:
        rows = datasets.load_dataset(**load_args, split="train", streaming=True)
        for row in rows:
            if field not in row:
                raise UserError(f"{what}: rows have no \"{field}\" field (fields: {', '.join(row)})")
            yield row[field]
    except UserError:
        raise
    except UnicodeDecodeError as e:
        raise UserError(f"{what}: not UTF-8 text ({e.reason})") from None
    except (OSError, ValueError, datasets.exceptions.DatasetGenerationError) as e:  # unreadable, malformed
        raise UserError(f"{what}: cannot read: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    finally:
        json_log.setLevel(json_level)


def input_files(path: str, kinds=TEXT_KINDS) -> list:
    """--input: one file, or the files of those kinds in a folder, in sorted order."""
    if os.path.isdir(path):
        files = sorted(f for f in glob.glob(os.path.join(path, "*")) if f.endswith(kinds))
        if not files:
            raise UserError(f"--input {path}: no {' / '.join(kinds)} files in this folder")
        return files
    if not os.path.exists(path):
        raise UserError(f"--input {path}: no such file or folder")
    if not path.endswith(kinds):
        raise UserError(f"--input {path}: expected a {' / '.join(kinds)} file or a folder of them")
    return [path]


def local_documents(files: list, field: str = "text"):
    """Documents from local files in order: a .txt file is one document; .jsonl and .parquet rows are
    documents (their `field`), read by the same Hugging Face streaming code as the Hub."""
    files = [f for f in files if os.path.getsize(f) > 0]  # an empty file holds no documents
    for kind, group in itertools.groupby(files, key=lambda f: os.path.splitext(f)[1]):
        group = list(group)
        if kind == ".txt":
            for path in group:
                yield read_text(path)
        else:
            builder = {".jsonl": "json", ".parquet": "parquet"}[kind]
            yield from hf_documents({"path": builder, "data_files": group}, field, ", ".join(group))


def fineweb_documents(dataset: str, version: str):
    """FineWeb or FineWeb-Edu from the Hub, streamed: a 100B-token prep needs no local copy of the raw data."""
    repo, sample = FINEWEB_REPOS[dataset], FINEWEB_SAMPLES[version]
    yield from hf_documents({"path": repo, "name": sample}, "text", f"{repo} ({sample})")


def tinystories_shards(input_path: str, work_dir: str) -> list:
    """TinyStories as llm.c reads it: the data*.json shards of TinyStories_all_data.tar.gz.

    --input may be that archive, a folder holding the shards (or other .json/.jsonl/.parquet/.txt story
    files), or one such file; without --input the archive is downloaded from the Hub.
    """
    if input_path is None:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()  # a failure is reported below, in one line
        try:
            input_path = hf_hub_download(TINYSTORIES_REPO, TINYSTORIES_FILE, repo_type="dataset", local_dir=work_dir)
        except Exception as e:  # offline, or the Hub refused: there is no shipped copy of 1.5 GB of stories
            raise UserError(f"cannot download {TINYSTORIES_FILE} from {TINYSTORIES_REPO} ({type(e).__name__}); "
                            f"pass --input with the archive or its data*.json files") from None
    if input_path.endswith((".tar.gz", ".tgz")):
        folder = os.path.join(work_dir, "TinyStories_all_data")
        if not os.path.isdir(folder):
            unpack(input_path, folder)
        input_path = folder
    return input_files(input_path, kinds=(".json",) + TEXT_KINDS)


def unpack(archive: str, folder: str):
    """Extract a .tar.gz into `folder`, which appears only when the whole archive is out."""
    if not os.path.isfile(archive):
        raise UserError(f"--input {archive}: no such file")
    print(f"unpacking {archive} to {folder}")
    shutil.rmtree(folder + ".tmp", ignore_errors=True)  # left by an interrupted unpacking
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(folder + ".tmp", filter="data")
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:  # not a tar.gz, cut short, damaged
        shutil.rmtree(folder + ".tmp", ignore_errors=True)
        reason = str(e).splitlines()[0].rstrip(":") or type(e).__name__
        raise UserError(f"{archive}: not a readable .tar.gz ({reason}); expected TinyStories_all_data.tar.gz") from None
    except OSError as e:
        shutil.rmtree(folder + ".tmp", ignore_errors=True)
        raise UserError(f"{folder}: cannot unpack {archive} there: {e.strerror or e}") from None
    os.replace(folder + ".tmp", folder)


def tinystories_stories(path: str) -> list:
    """The stories of one TinyStories file: llm.c's .json shards (a list of {"story": ...}), .jsonl/.parquet
    rows ("text" or "story"), or .txt with stories separated by <|endoftext|> lines."""
    if path.endswith(".json"):
        try:
            with open_text(path) as f:
                rows = json.load(f)
            return [row["story"] for row in rows]
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError) as e:
            raise UserError(f"{path}: expected a JSON list of {{\"story\": ...}} objects ({type(e).__name__}: {e})") from None
    if path.endswith(".txt"):
        return [s for s in read_text(path).split("<|endoftext|>") if s.strip()]
    try:
        return list(local_documents([path], field="text"))
    except UserError:
        return list(local_documents([path], field="story"))


def copy_text(src: str, dest: str):
    """Copy a (possibly gzipped) text file to `dest` uncompressed, atomically."""
    if os.path.abspath(src) == os.path.abspath(dest):
        return
    with open_text(src) as fin, open(dest + ".tmp", "w", encoding="utf-8") as fout:
        shutil.copyfileobj(fin, fout)
    os.replace(dest + ".tmp", dest)
