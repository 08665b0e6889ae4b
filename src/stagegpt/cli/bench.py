"""Time stagegpt against Hugging Face GPT-2 on this machine (`stagegpt.tools.bench`).

Trains the `seed` shape (fp32 and bf16) and a small char shape, decodes 256 tokens,
measures the peak RSS of a training step and `prepare` throughput, each side by side
with transformers.GPT2LMHeadModel of the same shape and weights, the two alternating
trial by trial in one process (the char shape in --char-processes fresh ones). Prints a
table with the ratios, the achieved GFLOP/s and their fraction of the matmul ceilings
measured in the same run. Needs transformers (a test dependency).

examples:
  stagegpt bench                           # everything, a few minutes on 2 cores
  stagegpt bench --quick                   # 3 rounds instead of 7
  stagegpt bench --only train,decode --rounds 9 --json bench.json
"""

from __future__ import annotations

import argparse

HELP = "time training and decoding against Hugging Face GPT-2"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from stagegpt.tools.bench import add_arguments as bench_arguments

    bench_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from stagegpt.tools.bench import run as run_bench

    return run_bench(args)
