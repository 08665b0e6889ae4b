"""Fold a fine-tuned run's LoRA adapters into its weights: a plain checkpoint.

  stagegpt merge --ckpt runs/chat-lora --out ckpt/chat-merged
  stagegpt sample --ckpt ckpt/chat-merged --chat --prompt "Hello"

The result holds the full weights (W + (alpha / r) B A for every adapted layer) under the
plain model's names, so sample, convert and inspect read it like any checkpoint; it
computes what the adapted model computes. A classifier keeps its head (head.safetensors),
so `classify` reads the merged copy too. Runs without LoRA are copied as full weights.
"""

from __future__ import annotations

import argparse

HELP = "fold LoRA adapters into the weights: a plain checkpoint for sample/convert/inspect"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, metavar="DIR",
                        help="a `stagegpt finetune` run dir or checkpoint dir")
    parser.add_argument("--out", required=True, metavar="DIR", help="where to write the result")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing checkpoint at --out (never another kind of "
                             "directory, nor the run or checkpoint merged)")


def run(args: argparse.Namespace) -> int:
    from stagegpt.finetune import write_merged

    out = write_merged(args.ckpt, args.out, overwrite=args.overwrite)
    print(f"merged {args.ckpt} -> {out}")
    return 0
