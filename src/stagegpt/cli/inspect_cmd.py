"""Show every tensor transformation of one forward pass, parameter counts and FLOPs.

  stagegpt inspect --stage 3 --preset tiny            a fresh stage 3 model, input (1, 8)
  stagegpt inspect --stage 5 --preset gpt2            GPT-2 124M (built on the meta device)
  stagegpt inspect --ckpt runs/stage5 --batch-size 2 --seq 16

The table lists, in the order they run, each module's output and every operation between
modules (the embedding sum, residual additions, and inside attention the q/k/v split, the
heads, the scores, the causal mask, the softmax weights and the merge): module,
operation, output shape, dtype and the module's own parameters. Then parameters per
component (embeddings, attention, MLP, norms, head; a tied head is counted once, under
embeddings) and matmul FLOPs per token over the full context, forward and training (3x),
the numbers the ladder reports. A model from --preset is built on the meta device: shapes
only, no weights allocated and nothing computed, so even gpt2-xl takes seconds. --json
prints the same as data.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from stagegpt.model.config import PRESETS
from stagegpt.model.stages import STAGES

HELP = "print a model's shape trace, parameter counts and FLOPs per token"
FLAGS = {"batch": "--batch-size"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", type=int, choices=list(STAGES),
                        help="which stage to build (required with --preset; with --ckpt it "
                             "must match the checkpoint's)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", metavar="NAME",
                        help="model shape preset, one of: " + ", ".join(PRESETS) +
                             " (default: small, as for train)")
    source.add_argument("--ckpt", metavar="DIR", help="a checkpoint or run dir to inspect")
    parser.add_argument("--batch-size", "--batch", dest="batch", type=int, default=1,
                        metavar="B", help="batch size B of the input (default: 1)")
    parser.add_argument("--seq", type=int,
                        help="sequence length T of the input (default: 8, or block_size if "
                             "smaller)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from stagegpt.tools.inspection import format_inspection, inspect_model, model_to_inspect

    model = model_to_inspect(args.stage, args.preset, args.ckpt)
    seq = args.seq if args.seq is not None else min(8, model.config.block_size)
    inspection = inspect_model(model, batch=args.batch, seq=seq)
    text = json.dumps(inspection.to_dict(), indent=2) if args.json else format_inspection(
        inspection)
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `stagegpt inspect ... | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
