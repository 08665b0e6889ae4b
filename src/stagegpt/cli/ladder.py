"""Train the stages on one budget and compare them: the project's main demo.

Every stage gets the same data, seed, batch, context, width and budget (--max-steps, or
--max-seconds per stage, converted to steps by timing a few steps first). Writes
OUT/ladder.md and ladder.csv (stage, what it adds, parameters, FLOPs/token, train loss,
val loss over the whole val split (up to 131,072 tokens, spread over a larger one), val
perplexity, the HellaSwag-style endings test's accuracy (see `stagegpt eval`), tokens/s,
wall time, KV-cache bytes per token), ladder.png (validation curves by step, or by training
seconds with --max-seconds; with the entropy rate and bigram floor for markov data),
samples.md (one sample per stage from the same prompt and seed), and each stage's run
in OUT/stage{N}, so `stagegpt sample --ckpt OUT/stage5` works. Interrupt it any time;
--resume skips the stages already finished and continues the one in progress.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from stagegpt.cli.train import FLAGS as TRAIN_FLAGS
from stagegpt.cli.train import add_model_arguments, add_train_arguments, configs_from_args
from stagegpt.errors import StagegptError
from stagegpt.model.stages import STAGES

HELP = "train stages (1-5 by default, up to 9) on one budget; write a table, plot, samples"
FLAGS = {**TRAIN_FLAGS, "max_new_tokens": "--sample-tokens"}


def parse_stages(text: str) -> list[int]:
    """"1,2,5", "1-9", "5-9" or a mix ("1,3,5-9") -> sorted stage numbers."""
    stages: set[int] = set()
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            first, _, last = part.partition("-")
            low, high = int(first), int(last or first)
            if not min(STAGES) <= low <= high <= max(STAGES):  # before range() is built
                raise StagegptError(f"--stages must name stages between {min(STAGES)} and "
                                    f"{max(STAGES)}, got {text[:40]!r}")
            stages.update(range(low, high + 1))
    except ValueError:
        raise StagegptError(
            f"--stages must be a list like 1,2,5 or a range like 5-9, got {text[:40]!r}"
        ) from None
    if not stages:
        raise StagegptError(f"--stages must name stages between {min(STAGES)} and "
                            f"{max(STAGES)}, got {text[:40]!r}")
    return sorted(stages)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="data dir written by `stagegpt prepare`")
    parser.add_argument("--out", required=True, help="ladder output dir")
    parser.add_argument("--stages", default="1-5", metavar="LIST",
                        help="which stages: a list (1,2,5), a range (1-9, 5-9) or both "
                             "(default: 1-5, the GPT-2 ladder)")
    parser.add_argument("--resume", action="store_true",
                        help="continue a ladder in --out, skipping finished stages")
    parser.add_argument("--prompt", default="", help="prompt for samples.md (default: empty)")
    parser.add_argument("--sample-tokens", type=int, default=200,
                        help="tokens per sample in samples.md")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--jobs", type=int, metavar="N",
                        help="stages trained at once, each in a process of its own with an "
                             "equal share of the threads, at most --threads (default: 2 on a "
                             "CPU with 2 or more "
                             "threads, else 1: a small stage's steps cannot keep many threads "
                             "busy, so two side by side finish sooner; 1 trains them in "
                             "turn in this process)")
    add_model_arguments(parser)
    add_train_arguments(parser)
    budget = next(a for a in parser._actions if a.dest == "max_seconds")
    budget.help = ("seconds of training per stage, instead of --max-steps (not both): each "
                   "stage times a few steps first and turns it into its own step budget, "
                   "once, so --resume continues exactly")


def check_jobs_fit_threads(jobs: int) -> None:
    """--threads is the whole ladder's: each of --jobs workers needs one of them."""
    import torch

    threads = torch.get_num_threads()
    if jobs > threads:
        raise StagegptError(f"--jobs {jobs} needs a thread per worker, but there are {threads} "
                            "(--threads, or the cores); pass --jobs 1 to train the stages in "
                            "turn, or more --threads")


def run(args: argparse.Namespace) -> int:
    from stagegpt.tools.ladder import run_ladder
    from stagegpt.tools.ladder_jobs import auto_jobs

    stages = parse_stages(args.stages)
    model_config, train_config = configs_from_args(args, one_budget=True)
    budget_seconds = train_config.max_seconds
    jobs = auto_jobs(len(stages), train_config.device) if args.jobs is None else args.jobs
    check_jobs_fit_threads(jobs)
    train_config = replace(train_config, max_seconds=None)
    rows = run_ladder(args.data, args.out, model_config, train_config, stages,
                      resume=args.resume, max_seconds=budget_seconds, prompt=args.prompt,
                      sample_tokens=args.sample_tokens, progress=not args.no_progress,
                      fast=not args.no_fast, jobs=jobs)
    if rows is None:
        print("ladder interrupted; rerun the same command with --resume to continue",
              file=sys.stderr)
        return 130
    table = Path(args.out) / "ladder.md"
    print(f"{table}:\n\n{table.read_text(encoding='utf-8')}")
    return 0
