"""Export a trained model to llm.c's model .bin or to a Hugging Face GPT-2 folder.

    python -m ds_train.export runs/gpt2_124M --format llmc --output gpt2_124M.bin          # fp32, version 3
    python -m ds_train.export runs/gpt2_124M --format llmc-bf16 --output gpt2_124M_bf16.bin # bf16, version 5
    python -m ds_train.export runs/gpt2_124M --format hf --output gpt2_124M_hf/            # transformers

An existing --output (a file, or a folder holding a Hugging Face model) is replaced only with --overwrite.

The source is a ds_train checkpoint (a run's -o directory, its newest complete checkpoint, or one step_*
directory; ZeRO partitions are consolidated to the fp32 master weights), or an llm.c model .bin or a Hugging
Face GPT-2 folder, so the command also converts between those two.
"""

import argparse
import os
import sys

if __package__ in (None, ""):
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import torch

from ds_train import convert
from ds_train.errors import UserError, usage_error

FORMATS = ("llmc", "llmc-bf16", "hf")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ds_train.export", allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("source", metavar="CHECKPOINT", help="a ds_train checkpoint, an llm.c model .bin or a Hugging Face GPT-2 folder")
    parser.add_argument("--format", required=True, choices=FORMATS, help="llmc (fp32), llmc-bf16, or hf")
    parser.add_argument("--output", required=True, metavar="PATH", help="the .bin file (llmc) or folder (hf) to write")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --output file, or Hugging Face folder (all of it)")
    parser.error = usage_error
    return parser.parse_args(argv)


def check_output(args):
    """--output can be written, and holds no earlier export unless --overwrite says to replace it; checked
    before the (possibly long) loading of the weights."""
    parent = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise UserError(f"--output {args.output}: cannot write in {parent}")
    if args.format == "hf":
        if os.path.isfile(args.output):
            raise UserError(f"--output {args.output}: is a file; the hf format writes a folder")
        if os.path.isdir(args.output) and os.listdir(args.output):
            # --overwrite replaces the whole folder, so it is only taken for a model folder, never for a folder of
            # other files (such as `--output .`)
            if not convert.is_hf_folder(args.output):
                raise UserError(f"--output {args.output}: a folder of other files (no config.json); "
                                "the hf format writes a new or empty folder")
            if not args.overwrite:
                raise UserError(f"--output {args.output}: already holds a Hugging Face model; "
                                "add --overwrite to replace that folder, or choose another --output")
    else:
        if os.path.isdir(args.output):
            raise UserError(f"--output {args.output}: is a folder; the {args.format} format writes one .bin file")
        if os.path.exists(args.output) and not args.overwrite:
            raise UserError(f"--output {args.output}: already exists; add --overwrite to replace it, or choose another --output")


def export(args):
    check_output(args)
    replaced = os.path.exists(args.output) and (args.format != "hf" or os.listdir(args.output))
    cfg, weights = convert.load_weights(args.source, "CHECKPOINT")
    if args.format == "hf":
        convert.write_hf(args.output, cfg, weights)
    else:
        convert.write_llmc(args.output, cfg, weights, torch.bfloat16 if args.format == "llmc-bf16" else torch.float32)
    print(f"{'replaced' if replaced else 'wrote'} {args.output} ({args.format}: {cfg.n_layer} layers, {cfg.n_embd} channels, "
          f"{cfg.num_params:,} parameters)")


def main(argv=None) -> int:
    try:
        export(parse_args(argv))
    except UserError as e:
        print(f"ds_train.export: error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
