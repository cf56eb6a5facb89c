"""Run settings (llm.c's flags, each with a long name) and engine settings (the DeepSpeed JSON), reconciled once.

The JSON holds engine concerns (ZeRO stage, micro-batch, accumulation, precision, activation checkpointing,
optimizer implementation, offload, monitors); the command line holds run concerns. Where both give a value
the flag wins and a note says so. `resolve()` returns the RunConfig that the trainer reads and the effective
DeepSpeed config that the engine gets; nothing else reads the raw flags or the raw JSON.
"""

import argparse
import copy
import difflib
import importlib.util
import json
import math
import os
from dataclasses import asdict, dataclass

from ds_train import convert
from ds_train.errors import UserError, usage_error
from ds_train.flash_attention import LEVELS as FLASH_ATTENTION_LEVELS
from ds_train.gelu_fusion import LEVELS as GELU_FUSION_LEVELS
from ds_train.model import RECOMPUTE_LEVELS, GPTConfig, config_from_descriptor
from ds_train.schedule import SCHEDULES
from ds_train.sources import ASSETS, HELLASWAG_SHIPPED

DEFAULT_TRAIN = os.path.join(ASSETS, "tinyshakespeare", "tiny_shakespeare_train.bin")
DEFAULT_VAL = os.path.join(ASSETS, "tinyshakespeare", "tiny_shakespeare_val.bin")
DEFAULT_HELLASWAG = HELLASWAG_SHIPPED  # the copy ds_train ships, which `prepare hellaswag` also falls back to
# what a run without --ds_config takes, as llm.c's train_gpt2cu runs without flags: the small-run JSON (ZeRO-1,
# bf16 on a GPU and fp32 on CPU, clipping at 1.0), which leaves the batch to the flags
DEFAULT_DS_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ds_configs",
                                 "quickstart.json")
ADAMW_DEFAULTS = {"betas": [0.9, 0.95], "eps": 1e-8}  # llm.c's fixed AdamW
ACTIVATION_CHECKPOINTING_DEFAULTS = {"partition_activations": False, "cpu_checkpointing": False,
                                     "contiguous_memory_optimization": False,
                                     "synchronize_checkpoint_boundary": False, "profile": False}
QUIET_STEPS_PER_PRINT = 2**31 - 1  # ds_train prints its own step line
# what ZeRO keeps off the GPU: "params" (parameters only) can come from a JSON, the flag offers the other three
OFFLOAD_LEVELS = {"none": (False, False), "optimizer": (True, False), "params": (False, True), "all": (True, True)}

# (short, long, type, default, metavar, help). A default of None means "from the JSON, else a default in resolve()".
FLAGS = [
    ("Data and output", [
        ("-i", "--train_data", str, DEFAULT_TRAIN, "GLOB", "train shard glob (default: the shipped tinyshakespeare)"),
        ("-j", "--val_data", str, DEFAULT_VAL, "GLOB", "val shard glob (default: the shipped tinyshakespeare)"),
        ("-e", "--init", str, "d12", "MODEL", "a descriptor (d12, gpt2:d24, gpt3:c768, gpt2:dL:cC:hH) or weights to "
                                              "start from: an llm.c model .bin, a Hugging Face GPT-2 folder, a ds_train checkpoint"),
        ("-o", "--output_dir", str, None, "DIR", "where main.log and the effective config go (default: none)"),
        ("-n", "--checkpoint_every", int, 0, "N", "checkpoint every N steps (0 = never)"),
        ("-nk", "--checkpoints_keep", int, 0, "K", "keep the last k checkpoints (0 = all)"),
        ("-nm", "--major_checkpoint_every", int, 0, "M", "never delete checkpoints at multiples of M"),
        ("-y", "--resume", int, 0, "0|1", "1 = resume from the newest checkpoint in -o, 0 = start over"),
        (None, "--resume_new_batch", int, 0, "0|1", "1 = let -y 1 go on with another total batch -d than the "
                                                    "checkpoint's (refused otherwise)"),
    ]),
    ("Batch", [
        ("-b", "--micro_batch_size", int, None, "B", "micro-batch B per GPU (JSON: train_micro_batch_size_per_gpu; default 4)"),
        ("-t", "--seq_len", int, 1024, "T", "sequence length T"),
        ("-d", "--total_batch_size", int, None, "TOKENS", "tokens per optimizer step (JSON: train_batch_size x T; default B*T*world)"),
        ("-x", "--max_steps", int, -1, "N", "optimizer steps (-1 = one epoch of the train data)"),
        ("-a", "--overfit_single_batch", int, 0, "0|1", "1 = train on the first val batch over and over (debugging)"),
        (None, "--shuffle", int, 1, "0|1", "1 = shuffle the train order per epoch as llm.c does, 0 = read it in file order"),
    ]),
    ("Optimization", [
        ("-k", "--lr_schedule", str, "cosine", "NAME", f"learning-rate schedule: {' | '.join(SCHEDULES)}"),
        ("-l", "--learning_rate", float, None, "LR", "peak learning rate (JSON: optimizer.params.lr; default 3e-4)"),
        ("-u", "--warmup_steps", int, 0, "N", "linear warmup steps"),
        ("-q", "--final_lr_frac", float, 1.0, "FRAC", "final learning rate as a fraction of -l"),
        ("-c", "--weight_decay", float, None, "WD", "AdamW weight decay on 2-D weights (JSON: optimizer.params.weight_decay; default 0)"),
        ("-sl", "--skip_loss_z", float, 0.0, "Z", "skip the update when the loss z-score exceeds this (0 = off)"),
        ("-sg", "--skip_grad_z", float, 0.0, "Z", "skip the update when the grad-norm z-score exceeds this (0 = off)"),
    ]),
    ("Evaluation", [
        ("-v", "--val_every", int, 20, "N", "val loss every N steps (and at step 0 and the last step; 0 = at the last step only)"),
        ("-m", "--val_max_steps", int, 20, "N", "val batches per evaluation (-1 = the whole split)"),
        ("-s", "--sample_every", int, 20, "N", "print a sample every N steps and at the end (0 = never)"),
        ("-g", "--gen_tokens", int, 64, "N", "tokens to sample"),
        ("-h", "--hellaswag", int, 0, "0|1", "1 = HellaSwag eval every -v steps and at the end"),
        (None, "--hellaswag_data", str, None, "PATH", "HellaSwag val: jsonl(.gz) or llm.c's eval .bin "
                                                                    "(default: the copy shipped with ds_train)"),
    ]),
    ("Memory and speed", [
        ("-z", "--zero_stage", int, None, "0-3", "ZeRO stage 0-3 (JSON: zero_optimization.stage; default 0)"),
        ("-r", "--recompute", int, None, "0-3", "recompute 0 none, 1 GELU, 2 GELU+LayerNorm, 3 whole blocks "
                                         "(default: 3 if the JSON has an activation_checkpointing section, else 0)"),
        (None, "--compile", int, None, "0|1", "1 = torch.compile each block and the loss's chunks (default: 1 on a "
                                              "GPU, 0 on CPU, where compiling costs more than it saves)"),
        (None, "--offload", str, None, "WHAT", "ZeRO offload to CPU memory: none | optimizer (fp32 master weights and "
                                               "AdamW; -z 1-3) | all (the bf16 weights too; -z 3) (JSON: "
                                               "zero_optimization.offload_optimizer/offload_param; default none)"),
        (None, "--offload_nvme", str, None, "DIR", "offload to files under DIR on an NVMe drive instead of CPU memory "
                                                   "(-z 3; needs DeepSpeed's async_io op, which needs libaio)"),
        (None, "--auto_fit", int, 0, "0|1", "1 = choose -b, -r, -z and --offload (those not given as flags) as the "
                                            "fastest setting whose memory estimate fits the GPU, keeping -d"),
        (None, "--gpu_memory", float, None, "GIB", "the GPU memory per rank --auto_fit plans for (default: 90%% of "
                                                   "this GPU's; needed on a machine without one)"),
        (None, "--host_memory", float, None, "GIB", "the host memory per node --auto_fit plans offload with "
                                                    "(default: 90%% of this machine's)"),
        ("-f", "--tf32", int, 1, "0|1", "1 = fp32 matmuls on a GPU's tensor cores in TF32, as llm.c's -f; 0 = full "
                                        "fp32 (bf16 runs have no fp32 matmuls to speed up)"),
        ("-ge", "--gelu_fusion", int, -1, "N", "GELU in cuBLASLt matmul epilogues, as llm.c's -ge: 0 none, 1 forward, "
                                               "2 forward and backward (default -1: 2 for bf16 on a GPU, else 0)"),
        ("-fa", "--flash_attention", int, -1, "N", "attention kernels in training: 0 SDPA (PyTorch's pick), 1 "
                                                   "FlashAttention-4 (bash scripts/setup.sh --gpu installs it; bf16 on "
                                                   "a Hopper or newer GPU) (default -1: 1 where it runs, else 0)"),
    ]),
]


class _ExactParser(argparse.ArgumentParser):
    """Flags match only as written. argparse's allow_abbrev=False stops abbreviated --long flags but still reads
    a short flag's prefix as the flag (llm.c's -f 1 as -fa 1) and glues a value to a short flag (-lg as -l g),
    so an llm.c flag that ds_train lacks would run as another one."""

    def _get_option_tuples(self, option_string):
        return []


def build_parser() -> argparse.ArgumentParser:
    parser = _ExactParser(
        prog="ds_train/main.py", add_help=False, allow_abbrev=False,
        description="Train GPT-2 / GPT-3 on llm.c token shards with a DeepSpeed engine. "
                    "Flags are llm.c's (train_gpt2cu), each with a long name.")
    parser.add_argument("--help", action="help", help="show this message and exit")
    parser.add_argument("--ds_config", default=DEFAULT_DS_CONFIG, metavar="JSON",
                        help="DeepSpeed JSON (engine settings), e.g. ds_configs/gpt2_124M.json (default: "
                             "ds_configs/quickstart.json, ZeRO-1, bf16 on a GPU and fp32 on CPU)")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # added by the deepspeed launcher
    parser.add_argument("--dry_run", type=int, default=0, metavar="RANKS",
                        help="print the run as RANKS ranks would run it (settings, steps, tokens per step, gradient "
                             "accumulation, a memory estimate per GPU) and exit; needs no GPU and no data")
    for title, flags in FLAGS:
        group = parser.add_argument_group(title)
        for short, long, kind, default, metavar, text in flags:
            names = [short, long] if short else [long]
            group.add_argument(*names, dest=long[2:], type=kind, default=default, help=text, metavar=metavar)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    parser.error = usage_error
    return parser.parse_args(argv)


@dataclass
class RunConfig:
    """Everything the trainer needs, settled: flags merged with the JSON, defaults applied, values checked."""
    ds_config_path: str
    train_data: str
    val_data: str
    init: str
    init_from_file: bool  # -e names weights to start from rather than a descriptor
    model: GPTConfig
    output_dir: str
    B: int
    T: int
    world_size: int
    total_batch_size: int  # tokens per optimizer step
    grad_accum: int
    max_steps: int
    shuffle: bool
    overfit_single_batch: bool
    lr_schedule: str
    learning_rate: float
    warmup_steps: int
    final_lr_frac: float
    weight_decay: float
    val_every: int
    val_max_steps: int
    hellaswag: bool
    hellaswag_data: str
    checkpoint_every: int
    checkpoints_keep: int
    major_checkpoint_every: int
    resume: bool
    resume_new_batch: bool
    skip_loss_z: float
    skip_grad_z: float
    sample_every: int
    gen_tokens: int
    zero_stage: int
    recompute: int
    offload: str  # OFFLOAD_LEVELS
    offload_nvme: str  # the NVMe folder, or None for CPU memory
    bf16: bool
    compile: bool
    gelu_fusion: int  # gelu_fusion.LEVELS
    flash_attention: int  # flash_attention.LEVELS
    tf32: bool  # fp32 matmuls in TF32 on a GPU (llm.c's -f)

    @property
    def train_flag(self) -> str:
        """The flag that names the train shards in messages: -a 1 trains on -j's."""
        return "-j (with -a 1)" if self.overfit_single_batch else "-i"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = {"descriptor": self.init, **asdict(self.model), "num_params": self.model.num_params}
        return d


def load_json(path: str) -> dict:
    try:
        with open(path) as f:
            cfg = json.load(f, object_pairs_hook=lambda pairs: _object_without_duplicates(pairs, path))
    except FileNotFoundError:
        raise UserError(f"--ds_config {path}: no such file") from None
    except OSError as e:
        raise UserError(f"--ds_config {path}: cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"--ds_config {path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"--ds_config {path}: expected a JSON object at the top level")
    return cfg


def _object_without_duplicates(pairs, path: str) -> dict:
    # json.load keeps the last of two equal keys; DeepSpeed, reading a JSON file itself, refuses them
    keys = [key for key, _ in pairs]
    twice = next((key for key in keys if keys.count(key) > 1), None)
    _check(twice is None, f"--ds_config {path}: the key \"{twice}\" appears twice in one object; keep one")
    return dict(pairs)


class _Merge:
    """Picks flag over JSON over default for one setting, and records a note when a flag overrides the JSON."""

    def __init__(self):
        self.notes = []

    def __call__(self, flag, flag_value, json_key, json_value, default):
        if flag_value is not None:
            if json_value is not None and json_value != flag_value:
                self.notes.append(f"{flag} {flag_value} overrides {json_key} = {json_value} from the JSON")
            return flag_value
        return json_value if json_value is not None else default


def hellaswag_file(path) -> str:
    """--hellaswag_data's file, the shipped HellaSwag val where the flag is not given (main.py's -h 1 and
    ds_train.evaluate's --hellaswag read the same default)."""
    path = path or DEFAULT_HELLASWAG
    _check(os.path.isfile(path), f"--hellaswag_data {path}: no such file (prepare it with python -m ds_train.prepare hellaswag)")
    return path


def _check(condition: bool, message: str):
    if not condition:
        raise UserError(message)


def resolve(args: argparse.Namespace, world_size: int, has_gpu: bool):
    """-> (RunConfig, effective DeepSpeed config dict, notes). Raises UserError on any bad or conflicting setting."""
    init_from_file = convert.is_model_path(args.init)
    if init_from_file:
        model = convert.read_config(args.init, "-e")
    else:
        try:
            model = config_from_descriptor(args.init)
        except ValueError as e:
            raise UserError(f"-e {args.init}: {e}") from None

    path = args.ds_config
    ds = copy.deepcopy(load_json(path))
    if "bfloat16" in ds:  # DeepSpeed's old name for "bf16", which it still reads (after "bf16", were both there)
        _check("bf16" not in ds, f"--ds_config {path}: both \"bf16\" and \"bfloat16\" (its old name); keep one")
        _check(isinstance(ds["bfloat16"], dict), f"--ds_config {path}: \"bfloat16\" must be an object, got {ds['bfloat16']!r}")
        ds["bf16"] = ds.pop("bfloat16")
    _check_json_types(ds, path)
    merge = _Merge()
    zero = ds.get("zero_optimization", {})
    optimizer = ds.get("optimizer", {"type": "AdamW", "params": {}})
    opt_params = optimizer.get("params", {})

    B = merge("-b", args.micro_batch_size, "train_micro_batch_size_per_gpu", _json_micro_batch(ds, path, world_size), 4)
    T = args.seq_len
    _check(B >= 1, f"-b {B}: the micro-batch must be at least 1")
    _check(1 <= T <= model.block_size, f"-t {T}: the sequence length must be between 1 and the model's {model.block_size} (-e {args.init})")
    tokens_per_micro_step = B * T * world_size
    try:
        json_total = _json_total_tokens(ds, path, T, world_size, B)
    except UserError:  # its three batch fields disagree at this world size: an error unless -d replaces them
        if args.total_batch_size is None:
            raise
        json_total = ds["train_batch_size"] * T
    total = merge("-d", args.total_batch_size, "train_batch_size x T", json_total, tokens_per_micro_step)
    source = f"-d {total}" if args.total_batch_size is not None else f"--ds_config {path}'s batch ({total} tokens at -t {T})"
    _check(total > 0 and total % tokens_per_micro_step == 0,
           f"{source}: the total batch must be a positive multiple of B*T*world = {B}*{T}*{world_size} = "
           f"{tokens_per_micro_step} tokens, so that gradient accumulation is a whole number of micro-steps")
    grad_accum = total // tokens_per_micro_step
    json_accum = ds.get("gradient_accumulation_steps")
    if json_accum is not None and json_accum != grad_accum:
        merge.notes.append(f"gradient accumulation {grad_accum} (-d / (B*T*world) = {total} / ({B}*{T}*{world_size})) "
                           f"replaces gradient_accumulation_steps = {json_accum} from the JSON")

    zero_stage = merge("-z", args.zero_stage, "zero_optimization.stage", zero.get("stage"), 0)
    _check(zero_stage in (0, 1, 2, 3), f"-z {zero_stage}: the ZeRO stage must be 0, 1, 2 or 3")
    recompute = _resolve_recompute(args.recompute, ds, merge)
    offload, offload_nvme = _resolve_offload(args, zero, path, zero_stage, merge)
    lr = merge("-l", args.learning_rate, "optimizer.params.lr", opt_params.get("lr"), 3e-4)
    weight_decay = merge("-c", args.weight_decay, "optimizer.params.weight_decay", opt_params.get("weight_decay"), 0.0)
    bf16 = _resolve_bf16(ds, path, has_gpu)
    # without ZeRO, DeepSpeed 0.19 runs bf16 through its fp16 optimizer (bf16 gradient accumulation, loss
    # scaling) and the updates drift from fp32, where ZeRO 1-3 keep fp32 accumulation and master weights
    _check(not (bf16 and zero_stage == 0), f"-z 0 with bf16 (--ds_config {path}): bf16 needs ZeRO stage 1, 2 or 3 "
           "in ds_train (DeepSpeed's ZeRO-0 bf16 path drifts from fp32); use -z 1, which costs nothing extra on one GPU")

    def given(flag, flag_value, key, value):  # the flag or the JSON, whichever set the value
        return f"{flag} {value}" if flag_value is not None else f"--ds_config {path}: {key} = {value}"

    _check(lr > 0 and math.isfinite(lr),
           f"{given('-l', args.learning_rate, 'optimizer.params.lr', lr)}: the learning rate must be a finite number > 0")
    _check(weight_decay >= 0 and math.isfinite(weight_decay),
           f"{given('-c', args.weight_decay, 'optimizer.params.weight_decay', weight_decay)}: weight decay must be a "
           "finite number >= 0")
    _check(args.lr_schedule in SCHEDULES, f"-k {args.lr_schedule}: unknown schedule; expected one of {', '.join(SCHEDULES)}")
    _check(args.warmup_steps >= 0, f"-u {args.warmup_steps}: warmup steps must be >= 0")
    _check(0.0 <= args.final_lr_frac <= 1.0, f"-q {args.final_lr_frac}: the final lr fraction must be between 0 and 1")
    _check(args.max_steps == -1 or args.max_steps >= 1, f"-x {args.max_steps}: max steps must be -1 (one epoch) or >= 1")
    _check(args.val_every >= 0, f"-v {args.val_every}: expected an interval >= 1, or 0 (val loss at the last step only)")
    _check(args.val_max_steps == -1 or args.val_max_steps >= 1, f"-m {args.val_max_steps}: val batches must be -1 (all) or >= 1")
    _check(args.sample_every >= 0, f"-s {args.sample_every}: sample interval must be >= 0 (0 = never)")
    _check(args.gen_tokens >= 1, f"-g {args.gen_tokens}: tokens to generate must be >= 1")
    _check(args.overfit_single_batch in (0, 1), f"-a {args.overfit_single_batch}: expected 0 or 1")
    _check(args.shuffle in (0, 1), f"--shuffle {args.shuffle}: expected 0 or 1")
    _check(args.output_dir is None or not os.path.isfile(args.output_dir), f"-o {args.output_dir}: is a file, expected a directory")
    _check(args.hellaswag in (0, 1), f"-h {args.hellaswag}: expected 0 or 1")
    _check(args.checkpoint_every >= 0, f"-n {args.checkpoint_every}: expected 0 (never) or a number of steps")
    _check(args.checkpoints_keep >= 0, f"-nk {args.checkpoints_keep}: expected 0 (keep all) or how many to keep")
    _check(args.major_checkpoint_every >= 0, f"-nm {args.major_checkpoint_every}: expected 0 (none) or a number of steps")
    _check(args.skip_loss_z >= 0, f"-sl {args.skip_loss_z}: expected 0 (off) or a positive z-score")
    _check(args.skip_grad_z >= 0, f"-sg {args.skip_grad_z}: expected 0 (off) or a positive z-score")
    _check(args.resume in (0, 1), f"-y {args.resume}: expected 0 (start over) or 1 (resume)")
    _check(args.resume == 0 or args.output_dir, f"-y {args.resume}: resuming needs -o, the run directory to resume")
    _check(args.dry_run >= 0, f"--dry_run {args.dry_run}: expected the number of ranks to plan for")
    _check(args.resume_new_batch in (0, 1), f"--resume_new_batch {args.resume_new_batch}: expected 0 or 1")
    _check(args.compile in (None, 0, 1), f"--compile {args.compile}: expected 0 or 1")
    _check(args.auto_fit in (0, 1), f"--auto_fit {args.auto_fit}: expected 0 or 1")
    for flag, gib in (("--gpu_memory", args.gpu_memory), ("--host_memory", args.host_memory)):
        if gib is not None:
            _check(gib > 0, f"{flag} {gib:g}: expected GiB > 0")
            _check(args.auto_fit, f"{flag} {gib:g}: only --auto_fit 1 plans with it")
    _check(args.checkpoint_every == 0 or args.output_dir, f"-n {args.checkpoint_every}: checkpoints need -o to say where they go")
    for flag, value in (("-nk", args.checkpoints_keep), ("-nm", args.major_checkpoint_every)):
        _check(value == 0 or args.checkpoint_every, f"{flag} {value}: only -n N (checkpoint every N steps) reads it")
    _check(args.tf32 in (0, 1), f"-f {args.tf32}: expected 0 or 1")
    _check(args.hellaswag or args.hellaswag_data is None, f"--hellaswag_data {args.hellaswag_data}: only -h 1 reads it")
    hellaswag_data = hellaswag_file(args.hellaswag_data) if args.hellaswag else DEFAULT_HELLASWAG
    _check(args.resume or not args.resume_new_batch, "--resume_new_batch 1: only -y 1 uses it (a resumed run's new -d)")
    # flags set to what this run never reads (llm.c ignores them unsaid)
    if args.lr_schedule == "constant" and (unread := [f"{flag} {value:g}" for flag, value, default in (
            ("-u", args.warmup_steps, 0), ("-q", args.final_lr_frac, 1.0)) if value != default]):
        merge.notes.append(f"{' and '.join(unread)} unused: -k constant has no warmup and no decay")
    if args.sample_every == 0 and args.gen_tokens != 64:
        merge.notes.append(f"-g {args.gen_tokens} unused: -s 0 samples no text")
    if args.major_checkpoint_every and not args.checkpoints_keep:
        merge.notes.append(f"-nm {args.major_checkpoint_every} unused: -nk 0 keeps every checkpoint")
    if args.tf32 == 0 and (bf16 or not has_gpu):
        merge.notes.append(f"-f 0 unused: TF32 is for fp32 matmuls on a GPU, and this run has none ({'bf16' if bf16 else 'CPU'})")

    gelu_fusion = _resolve_gelu_fusion(args.gelu_fusion, has_gpu and bf16, model, merge.notes)
    flash = _resolve_flash_attention(args.flash_attention, has_gpu and bf16, model, merge.notes)
    overfit = bool(args.overfit_single_batch)
    run = RunConfig(
        ds_config_path=path, train_data=args.val_data if overfit else args.train_data, val_data=args.val_data,
        init=args.init, init_from_file=init_from_file, model=model, output_dir=args.output_dir, B=B, T=T, world_size=world_size,
        total_batch_size=total, grad_accum=grad_accum, max_steps=args.max_steps,
        shuffle=bool(args.shuffle) and not overfit, overfit_single_batch=overfit, lr_schedule=args.lr_schedule,
        learning_rate=lr, warmup_steps=args.warmup_steps, final_lr_frac=args.final_lr_frac,
        weight_decay=weight_decay, val_every=args.val_every, val_max_steps=args.val_max_steps,
        hellaswag=bool(args.hellaswag), hellaswag_data=hellaswag_data, checkpoint_every=args.checkpoint_every,
        checkpoints_keep=args.checkpoints_keep, major_checkpoint_every=args.major_checkpoint_every, resume=bool(args.resume),
        resume_new_batch=bool(args.resume_new_batch), skip_loss_z=args.skip_loss_z, skip_grad_z=args.skip_grad_z,
        sample_every=args.sample_every, gen_tokens=args.gen_tokens, zero_stage=zero_stage, recompute=recompute,
        offload=offload, offload_nvme=offload_nvme, bf16=bf16, compile=has_gpu if args.compile is None else bool(args.compile),
        gelu_fusion=gelu_fusion, flash_attention=flash, tf32=bool(args.tf32))
    return run, _effective_ds_config(ds, path, run, optimizer, has_gpu), merge.notes


# the top-level keys ds_train reads; DeepSpeed passes over a key it does not know, so a misspelt one would be lost
READ_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size", "gradient_clipping",
             "zero_optimization", "optimizer", "scheduler", "bf16", "fp16", "activation_checkpointing", "data_types",
             "steps_per_print", "timers", "tensorboard", "csv_monitor", "wandb", "comet")


# AdamW's settings as ds_train passes them on (llm.c's AdamW; DeepSpeed's two switches of implementation): any
# other key reaches the optimizer's constructor, which would stop the run inside deepspeed.initialize
ADAMW_PARAMS = ("lr", "betas", "eps", "weight_decay", "torch_adam", "adam_w_mode")
# DeepSpeed's monitor sections, and the package each needs; DeepSpeed starts them inside deepspeed.initialize
MONITOR_PACKAGES = {"tensorboard": "tensorboard", "csv_monitor": None, "wandb": "wandb", "comet": "comet_ml"}


def _check_json_types(ds: dict, path: str):
    """The sections and numbers ds_train reads must have the right JSON type before anything reads them."""
    for key in ds:
        # (no DeepSpeed top-level key is this close to one of these; its elasticity section's max_/min_ batch keys are nested)
        near = difflib.get_close_matches(key, READ_KEYS, n=1, cutoff=0.8) if key not in READ_KEYS else []
        _check(not near, f"--ds_config {path}: unknown key \"{key}\"; did you mean \"{near[0] if near else ''}\"?")
    for key in ("zero_optimization", "optimizer", "bf16", "fp16", "activation_checkpointing", "data_types"):
        _check(isinstance(ds.get(key, {}), dict), f"--ds_config {path}: \"{key}\" must be an object, got {ds.get(key)!r}")
    _check(isinstance(ds.get("optimizer", {}).get("params", {}), dict), f"--ds_config {path}: optimizer.params must be an object")
    for key in ds.get("optimizer", {}).get("params", {}):
        near = difflib.get_close_matches(key, ADAMW_PARAMS, n=1, cutoff=0.7)
        _check(key in ADAMW_PARAMS, f"--ds_config {path}: optimizer.params.{key} is not a setting of ds_train's AdamW " +
               (f"(did you mean \"{near[0]}\"?)" if near else f"(it takes {', '.join(ADAMW_PARAMS)})"))
    amp = ds.get("amp", {})
    _check(not (isinstance(amp, dict) and amp.get("enabled") is True),
           f"--ds_config {path}: \"amp\" (NVIDIA Apex mixed precision) is not supported; use \"bf16\": {{\"enabled\": true}}")
    _check_monitors(ds, path)
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size"):
        value = ds.get(key, 1)
        _check(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
               f"--ds_config {path}: {key} must be a positive integer, got {value!r}")
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    _check(stage in (0, 1, 2, 3) and not isinstance(stage, bool), f"--ds_config {path}: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    is_number = lambda value: isinstance(value, (int, float)) and not isinstance(value, bool)
    params = ds.get("optimizer", {}).get("params", {})
    for key in ("lr", "weight_decay"):
        value = params.get(key, 0.0)
        _check(is_number(value), f"--ds_config {path}: optimizer.params.{key} must be a number, got {value!r}")
    betas, eps, clip = params.get("betas", [0.9, 0.95]), params.get("eps", 1e-8), ds.get("gradient_clipping", 1.0)
    _check(isinstance(betas, list) and len(betas) == 2 and all(is_number(b) and 0 <= b < 1 for b in betas),
           f"--ds_config {path}: optimizer.params.betas must be two numbers in [0, 1), got {betas!r}")
    _check(is_number(eps) and eps > 0, f"--ds_config {path}: optimizer.params.eps must be a number > 0, got {eps!r}")
    _check(is_number(clip) and clip >= 0, f"--ds_config {path}: gradient_clipping must be a number >= 0 (0: no clipping), got {clip!r}")


def _check_monitors(ds: dict, path: str):
    """An enabled monitor's package must import and its output_path must be a folder that can be written or made."""
    for key, package in MONITOR_PACKAGES.items():
        section = ds.get(key, {})
        _check(isinstance(section, dict), f"--ds_config {path}: \"{key}\" must be an object, got {section!r}")
        if section.get("enabled") is not True:
            continue
        _check(package is None or importlib.util.find_spec(package) is not None,
               f"--ds_config {path}: {key}.enabled needs the {package} package, which is not installed (pip install {package})")
        output_path = section.get("output_path")
        if output_path:
            _check(isinstance(output_path, str) and _can_make_dir(output_path),
                   f"--ds_config {path}: {key}.output_path {output_path!r}: expected a folder that can be written or made")


def _can_make_dir(path: str) -> bool:
    """Whether `path` is a writable folder or could be made as one: its nearest existing ancestor is one."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def json_total_tokens(path: str, T: int, world_size: int):
    """The total batch in tokens that --ds_config `path` fixes whatever the micro-batch, or None."""
    return _json_total_tokens(load_json(path), path, T, world_size)


def _json_batch_fields(ds: dict):
    return (ds.get(k) for k in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size"))


def _json_micro_batch(ds: dict, path: str, world_size: int):
    """The JSON's micro-batch: its own, or DeepSpeed's train_batch_size / (accumulation x world), or None."""
    micro, accum, total = _json_batch_fields(ds)
    if micro is not None or total is None or accum is None:
        return micro
    _check(total % (accum * world_size) == 0, f"--ds_config {path}: train_batch_size {total} is not a multiple of "
           f"gradient_accumulation_steps {accum} x world size {world_size}; give train_micro_batch_size_per_gpu or -b")
    return total // (accum * world_size)


def _json_total_tokens(ds: dict, path: str, T: int, world_size: int, B: int = None):
    """The JSON's batch size in tokens, or None when it names none (DeepSpeed counts sequences). A JSON that gives
    the accumulation but neither batch size gives B x accumulation x world, B being the run's micro-batch."""
    micro, accum, total = _json_batch_fields(ds)
    if total is not None and micro is not None and accum is not None and total != micro * accum * world_size:
        raise UserError(f"--ds_config {path}: train_batch_size {total} != train_micro_batch_size_per_gpu {micro} x "
                        f"gradient_accumulation_steps {accum} x world size {world_size}; give two of the three")
    if total is not None:
        return total * T
    if accum is not None and (micro or B) is not None:
        return (micro or B) * accum * world_size * T
    return None


def _resolve_recompute(flag_value, ds: dict, merge: _Merge) -> int:
    # without -r the JSON decides: its activation_checkpointing section means whole blocks, no section none
    json_level = 3 if "activation_checkpointing" in ds else None
    level = merge("-r", flag_value, "the activation_checkpointing section (level 3)", json_level, 0)
    _check(level in RECOMPUTE_LEVELS, f"-r {level}: recompute must be one of " +
           ", ".join(f"{k} ({v})" for k, v in RECOMPUTE_LEVELS.items()))
    return level


def _resolve_gelu_fusion(flag_value: int, bf16_gpu: bool, model: GPTConfig, notes: list) -> int:
    """-ge: llm.c's levels; -1 picks 2 where the fused kernels exist (bf16 on CUDA) and apply (a width cuBLASLt
    takes), at any -r."""
    _check(flag_value in (-1, *GELU_FUSION_LEVELS), f"-ge {flag_value}: expected -1 (default), 0, 1 or 2")
    why_not = ("the fused kernels are for bf16 on a CUDA GPU" if not bf16_gpu else
               f"cuBLASLt wants the width C = {model.n_embd} a multiple of 8" if model.n_embd % 8 else None)
    return _kernel_level("-ge", flag_value, 2, why_not, "GELU is computed unfused", notes)


def _resolve_flash_attention(flag_value: int, bf16_gpu: bool, model: GPTConfig, notes: list) -> int:
    """-fa: -1 picks 1 where the kernels apply (bf16 on CUDA, a head size they take); whether the package
    imports and the GPU is new enough is checked once the run starts (flash_attention.unavailable_reason)."""
    _check(flag_value in (-1, *FLASH_ATTENTION_LEVELS), f"-fa {flag_value}: expected -1 (default), 0 or 1")
    head_size = model.n_embd // model.n_head
    why_not = ("its kernels are for bf16 on a CUDA GPU" if not bf16_gpu else
               f"its kernels take head sizes 8-256 in multiples of 8, this model's is {head_size}"
               if head_size % 8 or head_size > 256 else None)
    return _kernel_level("-fa", flag_value, 1, why_not, "attention runs on SDPA", notes)


def _kernel_level(flag: str, value: int, default: int, why_not: str | None, instead: str, notes: list) -> int:
    """The level of a GPU kernel option: -1 is `default` where the kernels apply (why_not is None) and 0 where
    not; a level asked for where they do not apply becomes 0, with a note saying what runs `instead` and why."""
    if value == -1:
        return 0 if why_not else default
    if value and why_not:
        notes.append(f"{flag} {value}: {instead} in this run ({why_not})")
        return 0
    return value


def _resolve_offload(args, zero: dict, path: str, zero_stage: int, merge: _Merge):
    """-> (offload level, NVMe folder or None) from --offload/--offload_nvme over the JSON's offload sections."""
    sections = [zero.get(key) or {} for key in ("offload_optimizer", "offload_param")]
    for key, section in zip(("offload_optimizer", "offload_param"), sections):
        _check(isinstance(section, dict) and section.get("device", "cpu") in ("cpu", "nvme", "none", None),
               f"--ds_config {path}: zero_optimization.{key} must be an object with \"device\": \"cpu\", \"nvme\" or \"none\"")
    on = tuple(bool(s) and s.get("device", "cpu") not in ("none", None) for s in sections)
    json_level = next(name for name, flags in OFFLOAD_LEVELS.items() if flags == on)
    for key, section, used in zip(("offload_optimizer", "offload_param"), sections, on):
        _check(args.offload_nvme or not used or section.get("device") != "nvme" or section.get("nvme_path"),
               f"--ds_config {path}: zero_optimization.{key} has \"device\": \"nvme\" without \"nvme_path\", the "
               "folder on the NVMe drive")
    json_nvme = next((s.get("nvme_path") for s, used in zip(sections, on) if used and s.get("device") == "nvme"), None)
    _check(args.offload in (None, "none", "optimizer", "all"), f"--offload {args.offload}: expected none, optimizer or all")
    level = merge("--offload", args.offload, "zero_optimization's offload sections", json_level, "none")
    nvme = merge("--offload_nvme", args.offload_nvme, "nvme_path", json_nvme, None)
    _check(level == "none" or zero_stage > 0, f"--offload {level}: offloading needs ZeRO (-z 1, 2 or 3); ZeRO-0 keeps "
           "the optimizer whole on every GPU")
    _check(level in ("none", "optimizer") or zero_stage == 3, f"--offload {level}: offloading the parameters needs -z 3 "
           f"(only ZeRO-3 partitions them), got -z {zero_stage}; use --offload optimizer at ZeRO-{zero_stage}")
    if nvme is not None:
        _check(level != "none", f"--offload_nvme {nvme}: say what goes there with --offload optimizer or all")
        _check(zero_stage == 3, f"--offload_nvme {nvme}: DeepSpeed offloads to NVMe at ZeRO-3 only, got -z {zero_stage}")
        _check(os.path.isdir(nvme) and os.access(nvme, os.W_OK), f"--offload_nvme {nvme}: not a writable directory")
    return level, nvme


def _offload_section(old: dict, nvme: str) -> dict:
    section = {**(old or {}), "device": "nvme" if nvme else "cpu", "pin_memory": (old or {}).get("pin_memory", True)}
    if nvme:
        section["nvme_path"] = nvme
    else:
        section.pop("nvme_path", None)
    return section


def _resolve_bf16(ds: dict, path: str, has_gpu: bool) -> bool:
    if ds.get("fp16", {}).get("enabled") is True:
        raise UserError(f"--ds_config {path}: fp16 is not supported (llm.c trains in bf16); use \"bf16\": {{\"enabled\": true}} or fp32")
    enabled = ds.get("bf16", {}).get("enabled", "auto")
    _check(enabled in (True, False, "auto"), f"--ds_config {path}: bf16.enabled must be true, false or \"auto\", got {enabled!r}")
    return has_gpu if enabled == "auto" else enabled


def _effective_ds_config(ds: dict, path: str, run: RunConfig, optimizer: dict, has_gpu: bool) -> dict:
    if "scheduler" in ds:
        raise UserError(f"--ds_config {path}: remove the \"scheduler\" section; ds_train applies llm.c's schedules itself (-k -l -u -q)")
    kind = str(optimizer.get("type", "")).lower()
    params = dict(optimizer.get("params", {}))
    _check(kind in ("adam", "adamw") and params.get("adam_w_mode", True) is not False,
           f"--ds_config {path}: the optimizer must be AdamW (type \"AdamW\", or \"Adam\" without adam_w_mode false), got {optimizer.get('type')!r}")
    params = {**ADAMW_DEFAULTS, **params, "lr": run.learning_rate, "weight_decay": run.weight_decay}
    if not has_gpu and not OFFLOAD_LEVELS[run.offload][0]:
        # without a GPU DeepSpeed's FusedAdam is a C++ op that it JIT-builds on first use (about a minute on
        # 2 cores); torch's AdamW is the same update and needs no build. Offload keeps DeepSpeed's CPU Adam,
        # the optimizer that offloading GPU runs use.
        params.setdefault("torch_adam", True)

    ds["train_micro_batch_size_per_gpu"] = run.B
    ds["gradient_accumulation_steps"] = run.grad_accum
    ds["train_batch_size"] = run.B * run.grad_accum * run.world_size
    ds["optimizer"] = {**optimizer, "params": params}
    ds.setdefault("gradient_clipping", 1.0)
    ds.setdefault("steps_per_print", QUIET_STEPS_PER_PRINT)
    # DeepSpeed's throughput timer synchronizes the GPU at every micro-step's forward and step by default, and
    # the GPU then idles while the CPU catches up (7% of a d12 step on an H100); ds_train times steps itself
    ds.setdefault("timers", {"throughput": {"enabled": False}})
    ds["zero_optimization"] = zero = {**ds.get("zero_optimization", {}), "stage": run.zero_stage}
    for key, used in zip(("offload_optimizer", "offload_param"), OFFLOAD_LEVELS[run.offload]):
        if used:  # pinned CPU buffers: the copies to and from the GPU run asynchronously
            zero[key] = _offload_section(zero.get(key), run.offload_nvme)
        else:
            zero.pop(key, None)
    if run.zero_stage == 3 and run.compile:
        # under torch.compile ZeRO-3's default linear has its parameter checks guard on each layer's parameter
        # ids (a recompile per block) and its gradients came out wrong on an H100. torch's own linear (addmm)
        # compiles into the block's graph.
        _check(ds["zero_optimization"].get("memory_efficient_linear") is not True,
               f"--ds_config {path}: zero_optimization.memory_efficient_linear true gives wrong gradients with "
               f"--compile 1 at ZeRO-3; remove it (or use --compile 0)")
        ds["zero_optimization"]["memory_efficient_linear"] = False
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": run.bf16}
    if run.bf16 and run.zero_stage > 0:
        # accumulate gradients in fp32 across micro-steps (DeepSpeed's default would be bf16)
        ds["data_types"] = {"grad_accum_dtype": "fp32", **ds.get("data_types", {})}
        # DeepSpeed's ZeRO-1/2 optimizer (bf16 at ZeRO-2, or ZeRO-1 offloaded) scans every gradient for inf/NaN: a
        # few small kernels per parameter and a synchronization, launched while the GPU idles (together with its
        # per-parameter norm, which update.NormHook replaces, 2.4% of a d12 step on an H200). The guard skips
        # any step whose norm is not finite, which a single inf or NaN makes it: the scan finds nothing more
        ds["bf16"].setdefault("check_grad_overflow", False)
    if run.recompute == 3:
        ac = ds["activation_checkpointing"] = {**ACTIVATION_CHECKPOINTING_DEFAULTS, **ds.get("activation_checkpointing", {})}
        # DeepSpeed moves the partitioned activations to CPU memory; without partitions it hands the block an empty tensor
        _check(not ac["cpu_checkpointing"] or ac["partition_activations"], f"--ds_config {path}: activation_checkpointing."
               "cpu_checkpointing needs partition_activations: true too (DeepSpeed offloads the partitioned activations)")
    else:
        ds.pop("activation_checkpointing", None)
    return ds
