"""Classify text with a fine-tuned classifier: the label, then each label's probability.

  stagegpt classify --ckpt runs/genre --text "O Romeo, Romeo, wherefore art thou Romeo?"
  stagegpt classify --ckpt runs/genre --text-file passage.txt

A text longer than the model's context is cut to its first block_size tokens (as
`finetune --truncate` does).
"""

from __future__ import annotations

import argparse

from stagegpt.errors import StagegptError
from stagegpt.fileio import read_text_stream

HELP = "label a text with a fine-tuned classifier (prints label and probabilities)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, metavar="DIR",
                        help="a `stagegpt finetune --task classify` run (or a merged copy)")
    text = parser.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", metavar="TEXT", help="the text to classify")
    text.add_argument("--text-file", metavar="F", help="read the text from this file")


def run(args: argparse.Namespace) -> int:
    import torch

    from stagegpt.finetune import load_finetuned
    from stagegpt.finetune.classify import predict

    text = args.text if args.text_file is None else read_text_stream(args.text_file,
                                                                      "--text-file")
    tuned = load_finetuned(args.ckpt)
    if tuned.head is None:
        raise StagegptError(f"{args.ckpt} is an instruction model, not a classifier; use "
                            "stagegpt chat or sample --chat with it")
    ids = tuned.tokenizer.encode(text)[:tuned.lm.config.block_size]
    if not ids:
        raise StagegptError("the text is empty; give --text some words")
    with torch.no_grad():
        probs = predict(tuned.classifier, [ids], tuned.tokenizer.start_id)[0]
    labels = tuned.info["labels"]
    print(labels[int(probs.argmax())])
    for i in probs.argsort(descending=True).tolist():
        print(f"  {labels[i]:<20} {probs[i]:.3f}")
    return 0
