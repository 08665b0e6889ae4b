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
import os
from pathlib import Path

from stagegpt.cli import MAX_THREADS, threads_problem
from stagegpt.errors import StagegptError

HELP = "time training and decoding against Hugging Face GPT-2"
SECTIONS = ("train", "decode", "rss", "prepare")
MAX_ROUNDS = 1000
MAX_CHAR_PROCESSES = 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer rounds (3), for a rough look")
    parser.add_argument("--rounds", type=int, help=f"interleaved rounds per comparison, 1 to "
                        f"{MAX_ROUNDS} (default 7, or 3 with --quick)")
    parser.add_argument("--only", default=",".join(SECTIONS), metavar="SECTIONS",
                        help="comma-separated subset of: " + ", ".join(SECTIONS))
    parser.add_argument("--threads", type=int, default=2,
                        help=f"torch threads, 1 to {MAX_THREADS} (default 2)")
    parser.add_argument("--json", metavar="FILE", help="also write the medians to FILE")
    parser.add_argument("--char-processes", type=int, default=5,
                        help=f"fresh processes for the char shape's trials, 1 to "
                             f"{MAX_CHAR_PROCESSES} (default 5)")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    parser.add_argument("--char-child", action="store_true", help=argparse.SUPPRESS)


def check_args(args: argparse.Namespace) -> None:
    """Refuse impossible settings before anything runs."""
    if args.rounds is not None and not 1 <= args.rounds <= MAX_ROUNDS:
        raise StagegptError(f"--rounds must be from 1 to {MAX_ROUNDS}, got {args.rounds}")
    if problem := threads_problem(args.threads):
        raise StagegptError(problem)
    if not 1 <= args.char_processes <= MAX_CHAR_PROCESSES:
        raise StagegptError(f"--char-processes must be from 1 to {MAX_CHAR_PROCESSES}, got "
                            f"{args.char_processes}")
    check_sections(args.only)
    if args.json is not None:
        check_json_path(Path(args.json))
    if importlib.util.find_spec("transformers") is None:
        raise StagegptError("stagegpt bench compares with Hugging Face GPT-2 and needs "
                            "transformers; pip install transformers")


def check_sections(only: str) -> None:
    """--only must name at least one section, and only known ones."""
    sections = {s.strip() for s in only.split(",") if s.strip()}
    if not sections:
        raise StagegptError(f"--only names no section, got {only!r}; give one or more of "
                            f"{', '.join(SECTIONS)}")
    unknown = sections - set(SECTIONS)
    if unknown:
        raise StagegptError(f"--only takes {', '.join(SECTIONS[:-1])} and {SECTIONS[-1]}; "
                            f"got {', '.join(sorted(unknown))}")


def check_json_path(path: Path) -> None:
    """--json must be writable now, not only after the minutes the bench takes."""
    parent = path.parent
    if path.is_dir():
        raise StagegptError(f"--json {path} is a directory; give a file name inside it")
    if not parent.is_dir():
        raise StagegptError(f"--json {path}: the directory {parent} does not exist; create it "
                            "or choose another path")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and
                                                      not os.access(path, os.W_OK)):
        raise StagegptError(f"--json {path} cannot be written (permission denied); choose "
                            "another path")


def run(args: argparse.Namespace) -> int:
    check_args(args)
    from stagegpt.tools.bench import run as run_bench

    return run_bench(args)
