"""Time stagegpt against Hugging Face GPT-2 on this machine (`stagegpt.tools.bench`).

Trains the `seed` shape (fp32, and bf16 where the CPU has native bf16 products) and a
small char shape, decodes 256 tokens, measures the peak RSS of a training step and
`prepare` throughput, each side by side with transformers.GPT2LMHeadModel of the same
shape and weights, the two alternating trial by trial in one process (the char shape in
--char-processes fresh ones). Prints a table with the ratios, the achieved GFLOP/s and
their fraction of the matmul ceilings measured in the same run. Needs transformers (a
test dependency).

examples:
  stagegpt bench                           # everything, a few minutes on 2 cores
  stagegpt bench --quick                   # 3 rounds instead of 7
  stagegpt bench --only train,decode --rounds 9 --json bench.json
"""

from __future__ import annotations

import argparse
import importlib.util

from stagegpt.errors import StagegptError

HELP = "time training and decoding against Hugging Face GPT-2"
SECTIONS = ("train", "decode", "rss", "prepare")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer rounds (3), for a rough look")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per comparison "
                        "(default 7, or 3 with --quick)")
    parser.add_argument("--only", default=",".join(SECTIONS), metavar="SECTIONS",
                        help="comma-separated subset of: " + ", ".join(SECTIONS))
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--json", metavar="FILE", help="also write the medians to FILE")
    parser.add_argument("--char-processes", type=int, default=5,
                        help="fresh processes for the char shape's trials (default 5)")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    parser.add_argument("--char-child", action="store_true", help=argparse.SUPPRESS)


def check_args(args: argparse.Namespace) -> None:
    """Refuse impossible settings before anything runs."""
    if args.rounds is not None and args.rounds < 1:
        raise StagegptError(f"--rounds must be >= 1, got {args.rounds}")
    if args.threads < 1:
        raise StagegptError(f"--threads must be >= 1, got {args.threads}")
    if args.char_processes < 1:
        raise StagegptError(f"--char-processes must be >= 1, got {args.char_processes}")
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = sections - set(SECTIONS)
    if unknown:
        raise StagegptError(f"--only takes {', '.join(SECTIONS[:-1])} and {SECTIONS[-1]}; "
                            f"got {', '.join(sorted(unknown))}")
    if importlib.util.find_spec("transformers") is None:
        raise StagegptError("stagegpt bench compares with Hugging Face GPT-2 and needs "
                            "transformers; pip install transformers")


def run(args: argparse.Namespace) -> int:
    check_args(args)
    from stagegpt.tools.bench import run as run_bench

    return run_bench(args)
