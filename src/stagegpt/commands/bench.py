"""Time stagegpt against Hugging Face GPT-2 on this machine (runs benchmarks/bench.py).

Trains the `seed` shape (fp32 and bf16) and a small char shape, decodes 256 tokens,
measures the peak RSS of a training step and `prepare` throughput, each side by side
with transformers.GPT2LMHeadModel of the same shape and weights, the two alternating
trial by trial in one process (the char shape in --char-processes fresh ones). Prints a
table with the ratios, the achieved GFLOP/s and their fraction of the matmul ceilings
measured in the same run. Runs from a source checkout (benchmarks/ is not installed)
with transformers available.

examples:
  stagegpt bench                           # everything, a few minutes on 2 cores
  stagegpt bench --quick                   # 3 rounds instead of 7
  stagegpt bench --only train,decode --rounds 9 --json bench.json
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from stagegpt.errors import StagegptError

HELP = "time training and decoding against Hugging Face GPT-2 (benchmarks/bench.py)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 7")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per comparison")
    parser.add_argument("--only", metavar="SECTIONS",
                        help="comma-separated subset of: train, decode, rss, prepare")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    parser.add_argument("--char-processes", type=int, default=5,
                        help="fresh processes for the char shape's trials (default 5)")


def script_path() -> Path:
    import stagegpt

    path = Path(stagegpt.__file__).resolve().parents[2] / "benchmarks" / "bench.py"
    if not path.is_file():
        raise StagegptError(
            "stagegpt bench runs benchmarks/bench.py from a source checkout, and this "
            "installation has none; clone the repository and run it there"
        )
    return path


def run(args: argparse.Namespace) -> int:
    if args.rounds is not None and args.rounds < 1:
        raise StagegptError(f"--rounds must be >= 1, got {args.rounds}")
    if args.threads < 1:
        raise StagegptError(f"--threads must be >= 1, got {args.threads}")
    if args.char_processes < 1:
        raise StagegptError(f"--char-processes must be >= 1, got {args.char_processes}")
    if importlib.util.find_spec("transformers") is None:
        raise StagegptError("stagegpt bench compares with Hugging Face GPT-2 and needs "
                            "transformers; pip install transformers")
    argv = ["--threads", str(args.threads), "--char-processes", str(args.char_processes)]
    if args.quick:
        argv.append("--quick")
    if args.rounds is not None:
        argv += ["--rounds", str(args.rounds)]
    if args.only:
        unknown = {s.strip() for s in args.only.split(",")} - {"train", "decode", "rss",
                                                                 "prepare", ""}
        if unknown:
            raise StagegptError(f"--only takes train, decode, rss and prepare; "
                                f"got {', '.join(sorted(unknown))}")
        argv += ["--only", args.only]
    if args.json:
        argv += ["--json", args.json]
    return load_bench().main(argv)


def load_bench() -> ModuleType:
    """benchmarks/bench.py as a module."""
    spec = importlib.util.spec_from_file_location("stagegpt_bench", script_path())
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up there
    spec.loader.exec_module(bench)
    return bench
