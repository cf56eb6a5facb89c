"""Evaluate a trained model: val loss, HellaSwag and a sample, ending with one JSON line for scripts.

    python -m ds_train.evaluate --model runs/gpt2_124M -j "data/fineweb10B/fineweb_val_*.bin" --hellaswag
    python -m ds_train.evaluate --model gpt2_124M.bin --hellaswag --limit 500      # an llm.c model file
    python -m ds_train.evaluate --model hf_export/ --hellaswag -g 64               # a Hugging Face GPT-2 folder
    deepspeed --num_gpus 8 ds_train/evaluate.py --model ... --hellaswag            # split across GPUs

--model is a ds_train checkpoint (a run's -o directory, its newest complete checkpoint, or one step_*
directory), an llm.c model .bin or a Hugging Face GPT-2 folder. The last line printed is
{"model": ..., "val_loss": ..., "hellaswag_acc": ..., "hellaswag_acc_norm": ..., "examples": ...}.
"""

import argparse
import contextlib
import json
import os
import sys
import time

if __package__ in (None, ""):
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import torch

from ds_train import config, convert, distributed, host_memory
from ds_train.data import ShardLoader
from ds_train.errors import UserError, usage_error
from ds_train.evals import hellaswag, sample_text, val_loss, val_num_batches
from ds_train.hellaswag import check_fits, load_rendered
from ds_train.model import GPT


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ds_train.evaluate", allow_abbrev=False,
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, metavar="PATH",
                        help="a ds_train checkpoint (run dir or step_* dir), an llm.c model .bin, or a Hugging Face GPT-2 folder")
    parser.add_argument("-j", "--val_data", metavar="GLOB", help="val shards for the val loss (default: none)")
    parser.add_argument("-m", "--val_max_steps", type=int, metavar="N",
                        help="val batches, at most the split's (default -1: the whole split)")
    parser.add_argument("-b", "--micro_batch_size", type=int, default=8, metavar="B", help="batch for val loss; B*T tokens per HellaSwag forward")
    parser.add_argument("-t", "--seq_len", type=int, default=1024, metavar="T", help="sequence length (at most the model's)")
    parser.add_argument("--hellaswag", action="store_true", help="score HellaSwag val")
    parser.add_argument("--hellaswag_data", metavar="PATH",
                        help="HellaSwag val: jsonl(.gz) or llm.c's eval .bin (default: the shipped copy)")
    parser.add_argument("--limit", type=int, default=0, metavar="N", help="score only the first N HellaSwag examples")
    parser.add_argument("-g", "--gen_tokens", type=int, default=0, metavar="N", help="print a sample of N tokens (0 = none)")
    parser.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto", help="auto: bf16 on GPU, fp32 on CPU")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    parser.error = usage_error
    args = parser.parse_args(argv)
    # flags for a part that does not run are mistakes, not settings to ignore
    if args.val_max_steps is not None and not args.val_data:
        raise UserError(f"-m {args.val_max_steps}: val batches need -j, the val shards to read them from")
    for flag, value in (("--hellaswag_data", args.hellaswag_data), ("--limit", args.limit)):
        if value and not args.hellaswag:
            raise UserError(f"{flag} {value}: applies to HellaSwag, which runs only with --hellaswag")
    args.val_max_steps = -1 if args.val_max_steps is None else args.val_max_steps
    if args.val_max_steps == 0 or args.val_max_steps < -1:
        raise UserError(f"-m {args.val_max_steps}: expected -1 (all) or a number of batches")
    for flag, value, least in (("--limit", args.limit, 0), ("-b", args.micro_batch_size, 1), ("-g", args.gen_tokens, 0)):
        if value < least:
            raise UserError(f"{flag} {value}: expected a number >= {least}")
    if args.hellaswag:
        args.hellaswag_data = config.hellaswag_file(args.hellaswag_data)
    return args


def evaluate(args) -> dict:
    place = distributed.discover()
    cfg, weights = convert.load_weights(args.model, "--model")
    if not (args.val_data or args.hellaswag or args.gen_tokens):  # after loading: --model alone checks the model
        raise UserError(f"--model {args.model}: loads, but there is nothing to evaluate: give -j (val loss), "
                        "--hellaswag or -g (a sample)")
    if not 1 <= args.seq_len <= cfg.block_size:
        raise UserError(f"-t {args.seq_len}: the sequence length must be between 1 and the model's {cfg.block_size}")
    val_loader = None
    if args.val_data:
        val_loader = ShardLoader(args.val_data, args.micro_batch_size, args.seq_len, place.rank, place.world_size,
                                 shuffle=False, flag="-j", vocab_size=cfg.vocab_size)
        val_batches, val_note = val_num_batches(val_loader, args.val_max_steps, args.val_data)
    examples = load_rendered(args.hellaswag_data) if args.hellaswag else None
    if examples and args.limit:
        examples = examples[:args.limit]
    if examples:
        check_fits(examples, args.hellaswag_data, cfg, f"--model {args.model}")

    if place.world_size > 1:
        distributed.init_process_group(place)
    device = torch.device(f"cuda:{place.local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        host_memory.keep_freed_memory()
    bf16 = args.dtype == "bf16" or (args.dtype == "auto" and device.type == "cuda")
    model = GPT(cfg)
    model.load_state_dict(weights)
    model.to(device).eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    print0 = distributed.print0
    print0(f"model: {args.model} ({cfg.n_layer} layers, {cfg.n_embd} channels, {cfg.num_params:,} parameters), "
           f"{'bf16' if bf16 else 'fp32'} on {device.type}, {place.world_size} process(es)")

    result = {"model": args.model, "val_loss": None, "hellaswag_acc": None, "hellaswag_acc_norm": None, "examples": 0}
    with autocast:
        if val_loader:
            if val_note:
                print0(f"note: {val_note}")
            result["val_loss"] = val_loss(model, val_loader, val_batches)
            print0(f"val loss {result['val_loss']:.6f} ({val_batches} batches of {args.micro_batch_size}x{args.seq_len} per process)")
        if examples:
            start = time.perf_counter()
            scores = hellaswag(model, examples, token_budget=args.micro_batch_size * args.seq_len)
            result.update(hellaswag_acc=scores.acc, hellaswag_acc_norm=scores.acc_norm, examples=scores.total)
            print0(f"HellaSwag: {scores.correct_norm}/{scores.total} = {scores.acc_norm:.6f} (acc_norm), "
                   f"acc {scores.acc:.6f}, {time.perf_counter() - start:.1f} s")
        if args.gen_tokens:
            print0(f"generating:\n---\n{sample_text(model, args.gen_tokens)}\n---")
    distributed.shutdown()
    return result


def main(argv=None) -> int:
    try:
        result = evaluate(parse_args(argv))
    except UserError as e:
        print(f"ds_train.evaluate: error: {e}", file=sys.stderr, flush=True)
        return 2
    distributed.print0(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
