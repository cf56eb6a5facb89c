"""Model weights in and out of ds_train: llm.c's model .bin and Hugging Face GPT-2 folders.

Both hold the same tensors as ds_train's GPT under the same names. llm.c's file is a 256-int32 header
[20240326, version (3 = fp32, 5 = bf16), max T, V, L, heads, C, padded V], then every tensor in a fixed
order with each kind's layers stacked. Hugging Face's GPT-2 stores the four matmul weights transposed (its
Conv1D is (in, out)) and only the 50257 real vocabulary rows.
"""

import json
import os
import shutil

import numpy as np
import torch

from ds_train.errors import UserError
from ds_train.model import PADDED_VOCAB_SIZE, GPTConfig

LLMC_MAGIC = 20240326
LLMC_VERSIONS = {3: torch.float32, 5: torch.bfloat16}
# the per-layer tensors in llm.c's order; each is stored for all layers before the next kind
LAYER_TENSORS = ["ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                 "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                 "mlp.c_proj.weight", "mlp.c_proj.bias"]
HF_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
ASSETS = os.path.join(os.path.dirname(__file__), "assets", "gpt2_tokenizer")
HF_SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size")
# the weights files transformers looks for, in the order it prefers them
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def llmc_order(cfg: GPTConfig) -> list:
    """(name, shape) of every tensor in llm.c's file order."""
    C, L = cfg.n_embd, cfg.n_layer
    shapes = {"ln_1.weight": (C,), "ln_1.bias": (C,), "attn.c_attn.weight": (3 * C, C), "attn.c_attn.bias": (3 * C,),
              "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,), "ln_2.weight": (C,), "ln_2.bias": (C,),
              "mlp.c_fc.weight": (4 * C, C), "mlp.c_fc.bias": (4 * C,), "mlp.c_proj.weight": (C, 4 * C),
              "mlp.c_proj.bias": (C,)}
    order = [("transformer.wte.weight", (cfg.padded_vocab_size, C)), ("transformer.wpe.weight", (cfg.block_size, C))]
    for kind in LAYER_TENSORS:
        order += [(f"transformer.h.{layer}.{kind}", shapes[kind]) for layer in range(L)]
    return order + [("transformer.ln_f.weight", (C,)), ("transformer.ln_f.bias", (C,))]


def write_llmc(path: str, cfg: GPTConfig, state: dict, dtype: torch.dtype = torch.float32):
    version = {v: k for k, v in LLMC_VERSIONS.items()}[dtype]
    header = np.zeros(256, dtype="<i4")
    header[:8] = (LLMC_MAGIC, version, cfg.block_size, cfg.vocab_size, cfg.n_layer, cfg.n_head, cfg.n_embd,
                  cfg.padded_vocab_size)
    try:
        with open(path + ".tmp", "wb") as f:
            f.write(header.tobytes())
            for name, shape in llmc_order(cfg):
                tensor = state[name].detach().to("cpu", dtype).contiguous()
                assert tuple(tensor.shape) == shape, (name, tensor.shape, shape)
                f.write(tensor.view(torch.int16 if dtype == torch.bfloat16 else torch.float32).numpy().tobytes())
        os.replace(path + ".tmp", path)
    except OSError as e:  # no permission (which os.access cannot tell for root), a full disk, a read-only mount
        if os.path.exists(path + ".tmp"):
            os.remove(path + ".tmp")
        raise UserError(f"{path}: cannot write: {e.strerror or e}") from None


def read_llmc_config(path: str):
    """(GPTConfig, dtype) from an llm.c model file's header, its size checked against it."""
    try:
        size = os.path.getsize(path)
        header = np.fromfile(path, dtype="<i4", count=256)
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror}") from None
    if len(header) < 256 or header[0] != LLMC_MAGIC:
        raise UserError(f"{path}: bad magic {int(header[0]) if len(header) else None}, expected {LLMC_MAGIC} (not an llm.c model file)")
    version, maxT, V, L, NH, C, Vp = (int(x) for x in header[1:8])
    if version not in LLMC_VERSIONS:
        raise UserError(f"{path}: unsupported llm.c model version {version}, expected 3 (fp32) or 5 (bf16)")
    if min(maxT, V, L, NH, C) < 1 or C % NH or Vp < V:
        raise UserError(f"{path}: implausible shape in the header (T={maxT}, V={V}, L={L}, heads={NH}, C={C}, Vp={Vp})")
    cfg = GPTConfig(n_layer=L, n_head=NH, n_embd=C, block_size=maxT, vocab_size=V, padded_vocab_size=Vp)
    dtype = LLMC_VERSIONS[version]
    itemsize = 4 if dtype == torch.float32 else 2
    expected = 1024 + itemsize * cfg.num_params
    if size != expected:
        raise UserError(f"{path}: {size} bytes, but its header (L={L}, C={C}, T={maxT}, Vp={Vp}, version {version}) "
                        f"means {expected} bytes")
    return cfg, dtype


def read_llmc(path: str):
    """(GPTConfig, fp32 state dict) from an llm.c model file, its header and size checked."""
    cfg, dtype = read_llmc_config(path)
    itemsize = 4 if dtype == torch.float32 else 2
    raw = np.fromfile(path, dtype="<f4" if itemsize == 4 else "<i2", offset=1024)
    state, offset = {}, 0
    for name, shape in llmc_order(cfg):
        n = int(np.prod(shape))
        tensor = torch.from_numpy(raw[offset:offset + n].copy()).view(dtype).reshape(shape)
        state[name] = tensor.float()
        offset += n
    state["lm_head.weight"] = state["transformer.wte.weight"]
    return cfg, state


def write_hf(path: str, cfg: GPTConfig, state: dict):
    """A Hugging Face GPT-2 folder: config.json, model.safetensors and the GPT-2 tokenizer files. An existing
    folder at `path` is replaced whole (export asks for --overwrite, and takes only a model folder, first)."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    hf_config = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
                           n_layer=cfg.n_layer, n_head=cfg.n_head, activation_function="gelu_new",
                           layer_norm_epsilon=1e-5, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                           bos_token_id=50256, eos_token_id=50256, tie_word_embeddings=True)
    hf_state = {}
    for name, tensor in state.items():
        if name == "lm_head.weight":
            continue
        tensor = tensor.detach().float().cpu()
        if name == "transformer.wte.weight":
            tensor = tensor[:cfg.vocab_size]  # Hugging Face keeps only the real vocabulary
        hf_state[name] = tensor.t().contiguous() if name.endswith(HF_TRANSPOSED) else tensor
    model = GPT2LMHeadModel(hf_config)
    missing, unexpected = model.load_state_dict(hf_state, strict=False)
    assert not unexpected and all(k.endswith((".attn.bias", ".attn.masked_bias", "lm_head.weight")) for k in missing), missing
    # written beside it and moved in whole: a failed write leaves no half folder, and a replaced folder keeps
    # no file of the old model (a stale pytorch_model.bin or shard index would be loaded instead of ours)
    target = os.path.normpath(path)
    tmp = target + ".tmp"
    try:
        shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted export
        model.save_pretrained(tmp, safe_serialization=True)
        GPT2Tokenizer(os.path.join(ASSETS, "encoder.json"), os.path.join(ASSETS, "vocab.bpe")).save_pretrained(tmp)
        if os.path.exists(target):
            shutil.rmtree(target)
        os.rename(tmp, target)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{path}: cannot write: {e.strerror or e}") from None


def read_hf_config(path: str) -> GPTConfig:
    try:
        with open(os.path.join(path, "config.json")) as f:
            hf = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a Hugging Face model folder (config.json: {e})") from None
    if not isinstance(hf, dict) or hf.get("model_type") != "gpt2" or hf.get("activation_function", "gelu_new") != "gelu_new":
        raise UserError(f"{path}: expected a GPT-2 model with tanh GELU (model_type gpt2, gelu_new)")
    bad = [key for key in HF_SHAPE_KEYS if not (type(hf.get(key)) is int and hf[key] > 0)]
    if bad:
        raise UserError(f"{os.path.join(path, 'config.json')}: expected positive integers {', '.join(HF_SHAPE_KEYS)}; "
                        f"{', '.join(f'{key} is {hf[key]!r}' if key in hf else f'no {key}' for key in bad)}")
    if hf["n_embd"] % hf["n_head"]:
        raise UserError(f"{os.path.join(path, 'config.json')}: n_embd {hf['n_embd']} is not a multiple of n_head {hf['n_head']}")
    V = hf["vocab_size"]
    return GPTConfig(n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"], block_size=hf["n_positions"],
                     vocab_size=V, padded_vocab_size=max(PADDED_VOCAB_SIZE, -(-V // 128) * 128))


def check_hf_weights(path: str, cfg: GPTConfig):
    """The folder has weights; a model.safetensors is whole and holds every tensor in the shape config.json
    gives (transformers would stop on a wrong shape with a long report, and fill a missing tensor with random
    values, saying so only in a log line)."""
    present = [name for name in HF_WEIGHT_FILES if os.path.exists(os.path.join(path, name))]
    if not present:
        raise UserError(f"{path}: no model.safetensors (nor pytorch_model.bin) beside its config.json")
    if present[0] != "model.safetensors":
        return  # sharded, or PyTorch's pickle: transformers reads those and checks them itself
    from safetensors import SafetensorError, safe_open

    file = os.path.join(path, "model.safetensors")
    try:
        with safe_open(file, framework="pt") as f:
            # the Hub's GPT-2 files name the tensors without the "transformer." prefix
            stored = {name.removeprefix("transformer."): (name, tuple(f.get_slice(name).get_shape())) for name in f.keys()}
    except (SafetensorError, OSError) as e:
        raise UserError(f"{file}: not a readable safetensors file ({e})") from None
    config = (f"config.json (n_layer {cfg.n_layer}, n_embd {cfg.n_embd}, n_positions {cfg.block_size}, "
              f"vocab_size {cfg.vocab_size})")
    for name, shape in llmc_order(cfg):
        if name == "transformer.wte.weight":
            shape = (cfg.vocab_size, cfg.n_embd)  # Hugging Face keeps only the real vocabulary
        elif name.endswith(HF_TRANSPOSED):
            shape = shape[::-1]
        if name.removeprefix("transformer.") not in stored:
            raise UserError(f"{file}: no tensor {name}, which {config} calls for")
        stored_name, stored_shape = stored[name.removeprefix("transformer.")]
        if stored_shape != shape:
            raise UserError(f"{file}: {stored_name} has shape {list(stored_shape)}, but {config} means {list(shape)}")


def read_hf(path: str):
    """(GPTConfig, fp32 state dict) from a Hugging Face GPT-2 folder."""
    from transformers import GPT2LMHeadModel

    cfg = read_hf_config(path)
    check_hf_weights(path, cfg)
    V = cfg.vocab_size
    hf_state = GPT2LMHeadModel.from_pretrained(path, torch_dtype=torch.float32).state_dict()
    state = {}
    for name, tensor in hf_state.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight":
            continue
        state[name] = tensor.t().contiguous() if name.endswith(HF_TRANSPOSED) else tensor.clone()
    wte = torch.zeros(cfg.padded_vocab_size, cfg.n_embd)
    wte[:V] = state["transformer.wte.weight"]
    state["transformer.wte.weight"] = state["lm_head.weight"] = wte
    return cfg, state


def is_hf_folder(path: str) -> bool:
    return os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json"))


def is_model_path(path: str) -> bool:
    """Whether -e / --model names a file or folder (as opposed to a descriptor such as d12)."""
    return path.endswith(".bin") or os.path.sep in path or os.path.exists(path)


def read_config(path: str, flag: str) -> GPTConfig:
    """The model shape stored at `path`, without loading its weights."""
    if path.endswith(".bin"):
        return read_llmc_config(path)[0]
    if is_hf_folder(path):
        cfg = read_hf_config(path)
        check_hf_weights(path, cfg)  # here, before a run sets anything up, as read_llmc_config checks the size
        return cfg
    if os.path.isdir(path):
        from ds_train import checkpoint

        return GPTConfig(**checkpoint.client_state(*checkpoint.locate(path))["model"])
    raise UserError(f"{flag} {path}: expected an llm.c model .bin, a Hugging Face GPT-2 folder or a ds_train checkpoint")


def load_weights(path: str, flag: str):
    """(GPTConfig, fp32 state dict) from an llm.c model .bin, a Hugging Face GPT-2 folder or a ds_train
    checkpoint (a run directory or one of its step_* directories)."""
    if path.endswith(".bin"):
        return read_llmc(path)
    if is_hf_folder(path):
        return read_hf(path)
    if os.path.isdir(path):
        from ds_train import checkpoint

        return checkpoint.load_fp32(path)
    raise UserError(f"{flag} {path}: expected an llm.c model .bin, a Hugging Face GPT-2 folder or a ds_train checkpoint")
