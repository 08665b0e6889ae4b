"""Baselines for the fine-tuning figures in docs/finetune.md.

  python benchmarks/finetune_baselines.py bow data/r8 [--max-chars 64]
      the majority class and a bag-of-words logistic regression (written here, in torch:
      word counts -> log(1 + count) -> one linear layer -> softmax), trained on the train
      split with AdamW, its weight decay picked on val; accuracy on val and test.
  python benchmarks/finetune_baselines.py random-base runs/base ckpt/random
      a checkpoint of the base's stage, shape and tokenizer with fresh random weights
      (GPT-2's init), to fine-tune "from random" and measure what pretraining is worth.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

import torch
import torch.nn.functional as F

from stagegpt.data.finetune_records import read_finetune_dir


def words(text: str, max_chars: int | None) -> list[str]:
    return re.findall(r"[a-z']+", text[:max_chars].lower())


def features(records: list[dict], vocab: dict[str, int], max_chars: int | None) -> torch.Tensor:
    """(N, V) log(1 + count) of each vocabulary word in each text."""
    x = torch.zeros(len(records), len(vocab))
    for row, record in enumerate(records):
        for word, n in Counter(words(record["text"], max_chars)).items():
            if word in vocab:
                x[row, vocab[word]] = n
    return torch.log1p(x)


def logistic_regression(x: torch.Tensor, y: torch.Tensor, n_labels: int, decay: float,
                        epochs: int = 300) -> torch.nn.Linear:
    torch.manual_seed(0)
    model = torch.nn.Linear(x.size(1), n_labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=decay)
    for _ in range(epochs):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def bow(args: argparse.Namespace) -> None:
    meta, splits = read_finetune_dir(args.data)
    labels = meta["labels"]
    counts = Counter(w for r in splits["train"] for w in set(words(r["text"], args.max_chars)))
    vocab = {w: i for i, (w, n) in enumerate(counts.most_common(args.vocab)) if n >= 2}
    x = {s: features(rs, vocab, args.max_chars) for s, rs in splits.items()}
    y = {s: torch.tensor([labels.index(r["label"]) for r in rs]) for s, rs in splits.items()}
    majority = int(torch.bincount(y["train"], minlength=len(labels)).argmax())

    def accuracy(model, split):
        return float((model(x[split]).argmax(-1) == y[split]).float().mean())

    fits = {d: logistic_regression(x["train"], y["train"], len(labels), d)
            for d in (0.0, 0.01, 0.1, 1.0)}
    decay, model = max(fits.items(), key=lambda kv: accuracy(kv[1], "val"))
    with torch.no_grad():
        print(f"{args.data}: {len(vocab):,} words, first {args.max_chars or 'all'} characters")
        for split in ("val", "test"):
            print(f"  {split}: majority ({labels[majority]}) "
                  f"{float((y[split] == majority).float().mean()):.3f}, bag-of-words logistic "
                  f"regression {accuracy(model, split):.3f} (weight decay {decay})")


def random_base(args: argparse.Namespace) -> None:
    from stagegpt import build_model
    from stagegpt.interop import load_checkpoint
    from stagegpt.train.checkpoints import save_checkpoint

    base = load_checkpoint(args.base)
    torch.manual_seed(args.seed)
    model = build_model(base.stage, base.config)
    save_checkpoint(args.out, model, base.tokenizer, extra={"note": "random init"})
    print(f"stage {base.stage} with random weights -> {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)
    b = verbs.add_parser("bow", help="majority and bag-of-words baselines of a classify dir")
    b.add_argument("data")
    b.add_argument("--max-chars", type=int, default=None,
                   help="read only each text's first N characters (what a model of that "
                        "context sees)")
    b.add_argument("--vocab", type=int, default=5000, help="most common words kept")
    r = verbs.add_parser("random-base", help="a randomly initialized copy of a base's shape")
    r.add_argument("base")
    r.add_argument("out")
    r.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    {"bow": bow, "random-base": random_base}[args.verb](args)


if __name__ == "__main__":
    main()
