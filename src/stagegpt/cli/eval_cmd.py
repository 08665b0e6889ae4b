"""Score a checkpoint on a data dir's val split: its loss, and a HellaSwag-style test.

  stagegpt eval --ckpt runs/ladder/stage5 --data data/shakespeare_char
  stagegpt eval --ckpt runs/mine --data data/mine --items 1000 --seed 1 --json

The endings test builds --items questions from the val split (fixed by --seed): a context
of --context tokens, its true continuation, and three endings cut from elsewhere in the
split, each ending --ending-min to --ending-max tokens long. The model picks the ending
with the lowest summed loss (accuracy) and with the lowest loss per token
(length-normalized accuracy). Chance is 25%. Val loss covers the val split up to 131,072
tokens, as in the ladder's table. The data must be tokenized with the checkpoint's
tokenizer.
"""

from __future__ import annotations

import argparse
import json
import math

from stagegpt.tools.endings import DEFAULT_CONTEXT, DEFAULT_ENDING, DEFAULT_ITEMS

HELP = "print a checkpoint's val loss and its HellaSwag-style endings accuracy on a data dir"
FLAGS = {"ending": "--ending-min/--ending-max"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, metavar="DIR",
                        help="checkpoint dir, or a run dir (its newest checkpoint)")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="data dir written by `stagegpt prepare`; its val split is used")
    parser.add_argument("--items", type=int, default=DEFAULT_ITEMS, metavar="N",
                        help=f"questions in the endings test (default: {DEFAULT_ITEMS})")
    parser.add_argument("--context", type=int, metavar="T",
                        help=f"context tokens per question (default: {DEFAULT_CONTEXT}, less "
                             "for a smaller window; cropped from the left to fit it)")
    parser.add_argument("--ending-min", type=int, metavar="T",
                        help=f"shortest ending in tokens (default: {DEFAULT_ENDING[0]}, half "
                             "the longest in a smaller window; at most --ending-max)")
    parser.add_argument("--ending-max", type=int, metavar="T",
                        help=f"longest ending in tokens (default: {DEFAULT_ENDING[1]}, at most "
                             "a quarter of the model's window; at least --ending-min)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed that picks the questions (default: 0)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="weights to evaluate with (default: float32)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from stagegpt.tools.endings import evaluate_checkpoint

    ending = (args.ending_min, args.ending_max)  # an end not given: its default, in order
    result = evaluate_checkpoint(args.ckpt, args.data, args.items, args.context, ending,
                                 args.seed, args.dtype)
    if args.json:  # a diverged model's NaN loss is null: JSON has no NaN
        finite = {k: None if isinstance(v, float) and not math.isfinite(v) else v
                  for k, v in result.items()}
        print(json.dumps(finite, indent=2, allow_nan=False))
        return 0
    print(f"val loss              {result['val_loss']:.4f} (ppl {result['val_ppl']:.2f})")
    print(f"endings accuracy      {result['accuracy']:.1%} of {result['items']} "
          f"(chance {result['chance']:.0%})")
    print(f"  length-normalized   {result['accuracy_norm']:.1%}")
    return 0
