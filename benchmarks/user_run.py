"""`make bench`'s user run: `stagegpt train` as a user runs it, against a plain reference.

Each side is a fresh process started the same way and timed from start to exit:

- `stagegpt train --stage 5 ...` (the CLI: its own process settings, evals every 500 steps,
  checkpoints, metrics and plot included in its time);
- `python benchmarks/user_run.py --reference ...`: the textbook nanoGPT-style GPT of
  `benchmarks/recipe.py` (nn.Linear, SDPA, full logits + F.cross_entropy, AdamW) trained
  by a plain loop from the same initial weights on the same batches, then scored on 200
  fixed validation batches.

Pairs run interleaved, the side that starts alternating from pair to pair, each pair with
its own seed. Reported: tokens/s of each process (steps x batch x block / wall time),
their ratio, the trainer's own steady tokens/s, and both models' val loss on the same
batches. Two shapes: the char recipe of recipe.py (2,000 steps on the full Shakespeare),
and the seed shape (12 blocks, width 256, context 256, batch 8, GPT-2 BPE) for a few steps.

    python benchmarks/user_run.py                        # both shapes, 3 char pairs
    python benchmarks/user_run.py --only char --pairs 1 --steps 300
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # recipe.py beside this file
from recipe import (
    RECIPE,
    train_plain,
    train_stagegpt,
    val_loss,
)

from stagegpt.data.datasets import read_meta
from stagegpt.interop import load_checkpoint

SEED_SHAPE = dict(RECIPE, n_layer=12, n_head=4, n_embd=256, block_size=256, batch_size=8,
                  lr=6e-4, min_lr=6e-5, warmup_steps=2, steps=20)
DATA = {"char": ("data/shakespeare_full_char", "char"),
        "seed": ("data/shakespeare_full_gpt2", "gpt2")}


def prepare(data_dir: str, tokenizer: str) -> Path:
    """The full Shakespeare at `tokenizer`, prepared once (`--if-missing`)."""
    subprocess.run([sys.executable, "-m", "stagegpt", "prepare", "shakespeare", "--variant",
                    "full", "--tokenizer", tokenizer, "--out", data_dir, "--if-missing",
                    "--no-progress"], check=True)
    return Path(data_dir)


def run_stagegpt(data: Path, seed: int, r: dict, shape: str, tmp: Path) -> dict:
    out = tmp / f"stagegpt-{seed}"
    wall = train_stagegpt(data, out, seed, r)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steady = statistics.median(row["tokens_per_sec"] for row in rows[len(rows) // 4:])
    model = load_checkpoint(out).model.eval()
    loss = val_loss(lambda x, y: model(x, y)[1], data, r=r) if shape == "char" else None
    return {"wall": wall, "steady": steady, "val": loss}


def run_reference(data: Path, seed: int, r: dict, shape: str, tmp: Path) -> dict:
    result = tmp / f"reference-{seed}.json"
    start = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--reference", "--data", str(data), "--seed",
                    str(seed), "--shape", shape, "--steps", str(r["steps"]), "--json",
                    str(result)], check=True)
    wall = time.perf_counter() - start
    return {"wall": wall, **json.loads(result.read_text())}


def reference_main(args: argparse.Namespace) -> None:
    """In the reference's own process: train, score, write JSON."""
    torch.set_num_threads(args.threads)
    r = dict(RECIPE if args.shape == "char" else SEED_SHAPE, steps=args.steps)
    vocab = read_meta(args.data)["vocab_size"]
    model, seconds = train_plain(args.data, vocab, args.seed, own_init=False, r=r)
    steps_tokens = r["steps"] * r["batch_size"] * r["block_size"]
    loss = val_loss(model.eval(), args.data, r=r) if args.shape == "char" else None
    Path(args.json).write_text(json.dumps({"steady": steps_tokens / seconds, "val": loss}))


def compare(shape: str, pairs: int, steps: int, log) -> list[dict]:
    data = prepare(*DATA[shape])
    r = dict(RECIPE if shape == "char" else SEED_SHAPE, steps=steps)
    tokens = r["steps"] * r["batch_size"] * r["block_size"]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(pairs):
            seed = 1337 + i
            sides = [("stagegpt", run_stagegpt), ("reference", run_reference)]
            if i % 2:
                sides.reverse()
            pair = {name: fn(data, seed, r, shape, Path(tmp)) for name, fn in sides}
            for side in pair.values():
                side["tokens_per_s"] = tokens / side["wall"]
            pair["ratio"] = pair["stagegpt"]["tokens_per_s"] / pair["reference"]["tokens_per_s"]
            log(f"  {shape} pair {i + 1}/{pairs} (seed {seed}): stagegpt "
                f"{pair['stagegpt']['tokens_per_s']:,.0f} tok/s, reference "
                f"{pair['reference']['tokens_per_s']:,.0f} tok/s, {pair['ratio']:.2f}x")
            results.append(pair)
    return results


def report(shape: str, pairs: list[dict]) -> str:
    med = statistics.median

    def col(side: str, key: str) -> float | None:
        values = [p[side][key] for p in pairs if p[side][key] is not None]
        return med(values) if values else None

    lines = [f"| user run, {shape} ({len(pairs)} pairs, medians) | stagegpt train | reference "
             "| ratio |", "|---|---|---|---|",
             f"| process tokens/s (start to exit) | {col('stagegpt', 'tokens_per_s'):,.0f} | "
             f"{col('reference', 'tokens_per_s'):,.0f} | **{med(p['ratio'] for p in pairs):.2f}x**"
             " |",
             f"| training loop tokens/s (steady) | {col('stagegpt', 'steady'):,.0f} | "
             f"{col('reference', 'steady'):,.0f} | "
             f"{col('stagegpt', 'steady') / col('reference', 'steady'):.2f}x |"]
    if col("stagegpt", "val") is not None:
        lines.append(f"| val loss (200 fixed batches) | {col('stagegpt', 'val'):.4f} | "
                     f"{col('reference', 'val'):.4f} | |")
    lines.append("per pair: " + ", ".join(f"{p['ratio']:.2f}x" for p in pairs))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["char", "seed"], help="one shape only")
    parser.add_argument("--pairs", type=int, default=3, help="char pairs (default 3)")
    parser.add_argument("--steps", type=int, help="char steps (default: the recipe's 2000)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference:
        reference_main(args)
        return

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    out = []
    if args.only in (None, "char"):
        pairs = compare("char", args.pairs, args.steps or RECIPE["steps"], log)
        out.append(report("char", pairs))
    if args.only in (None, "seed"):
        out.append(report("seed", compare("seed", 1, SEED_SHAPE["steps"], log)))
    print("\n\n".join(out))


if __name__ == "__main__":
    main()
