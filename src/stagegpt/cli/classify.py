"""Classify text with a fine-tuned classifier: the label, then each label's probability.

  stagegpt classify --ckpt runs/genre --text "O Romeo, Romeo, wherefore art thou Romeo?"
  stagegpt classify --ckpt runs/genre --text-file passage.txt

A text longer than the model's context is cut to its first block_size tokens (as
`finetune --truncate` does).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stagegpt.errors import StagegptError

HELP = "label a text with a fine-tuned classifier (prints label and probabilities)"
MAX_TEXT_BYTES = 16 << 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, metavar="DIR",
                        help="a `stagegpt finetune --task classify` run (or a merged copy)")
    text = parser.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", metavar="TEXT", help="the text to classify")
    text.add_argument("--text-file", metavar="F", help="read the text from this file")


def read_text_file(path: Path) -> str:
    """The file's text, read no further than MAX_TEXT_BYTES (a pipe or /dev/stdin works)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TEXT_BYTES + 1)
        if len(data) > MAX_TEXT_BYTES:
            raise StagegptError(f"--text-file {path} is over {MAX_TEXT_BYTES:,} bytes; a "
                                "classifier reads only its first block_size tokens, so give "
                                "it the passage alone")
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or type(err).__name__
        raise StagegptError(f"cannot read --text-file {path} as UTF-8 text ({reason})") from None


def run(args: argparse.Namespace) -> int:
    import torch

    from stagegpt.finetune import load_finetuned
    from stagegpt.finetune.classify import predict

    text = args.text if args.text_file is None else read_text_file(Path(args.text_file))
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
