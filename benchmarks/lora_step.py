"""LoRA against full fine-tuning: trainable parameters, time per step and peak memory.

  python benchmarks/lora_step.py                   # both, steps interleaved (fair timing)
  python benchmarks/lora_step.py --mode full       # one mode per process: its peak memory
  python benchmarks/lora_step.py --mode lora

A classifier (stagegpt.finetune.classify.Classifier) on a stage 5 of GPT-2 124M's shape
(random weights: the speed does not depend on them), batches of 8 x 64 tokens, AdamW
(fused) on the trainable parameters, one thread. Steps of the two modes alternate, so a
machine shared with other jobs slows both alike; the median of the steps is reported.
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import time

import torch
import torch.nn.functional as F

from stagegpt import ModelConfig, build_model
from stagegpt.finetune.classify import Classifier
from stagegpt.finetune.lora import LoRAConfig, attach_lora, trainable_count


def models(modes: list[str], rank: int) -> dict[str, Classifier]:
    torch.manual_seed(0)
    lm = build_model(5, ModelConfig.from_preset("gpt2", block_size=64, dropout=0.0))
    out = {}
    for mode in modes:
        copy_ = copy.deepcopy(lm) if len(modes) > 1 else lm
        if mode == "lora":
            attach_lora(copy_, LoRAConfig(rank, 2.0 * rank))
        out[mode] = Classifier(copy_, 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["both", "full", "lora"], default="both")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    built = models(["full", "lora"] if args.mode == "both" else [args.mode], args.rank)
    optimizers = {m: torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                       lr=1e-4, fused=True) for m, model in built.items()}
    ids = torch.randint(0, 50257, (8, 64))
    lengths, labels = torch.full((8,), 64), torch.randint(0, 4, (8,))
    times: dict[str, list[float]] = {m: [] for m in built}
    for _ in range(args.steps + 1):  # the first step of each warms up
        for mode, model in built.items():
            start = time.perf_counter()
            F.cross_entropy(model(ids, lengths), labels).backward()
            optimizers[mode].step()
            optimizers[mode].zero_grad(set_to_none=True)
            times[mode].append(time.perf_counter() - start)
    for mode, model in built.items():
        print(f"{mode}: {trainable_count(model):,} trainable of "
              f"{sum(p.numel() for p in model.parameters()):,}; median step "
              f"{statistics.median(times[mode][1:]):.2f} s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory of this process: {peak:,.0f} MB")


if __name__ == "__main__":
    main()
