"""The bench's figures as a table (`report`) and as JSON (`to_json`), and the `Trials` they
come from."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from dataclasses import dataclass, field

import torch

from stagegpt.fast import cpu

DECODE_TOKENS = 256


@dataclass
class Trials:
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)

    def merge(self, values: dict[str, list[float]]) -> None:
        for name, more in values.items():
            self.values.setdefault(name, []).extend(more)

    def median(self, name: str) -> float:
        return statistics.median(self.values[name])

    def paired(self, name: str, other: str) -> float:
        """The median of the per-round ratios name/other: rounds are interleaved, so each
        pair ran under the same load, and this is steadier than a ratio of medians."""
        pairs = zip(self.values[name], self.values[other], strict=True)
        return statistics.median(a / b for a, b in pairs)

    def spread(self, name: str) -> str:
        v = sorted(self.values[name])
        return f"{v[0]:,.0f}-{v[-1]:,.0f}"


def report(results: dict, args: argparse.Namespace) -> str:
    lines = [f"stagegpt benchmark: {machine()}, torch {torch.__version__}, "
             f"{args.threads} threads, median of {args.rounds} interleaved rounds", ""]
    if "train" in results:
        t, flops = results["train"]["trials"], results["train"]["flops"]
        ceilings = {k: t.median(k) for k in ("fp32 torch.mm", "fp32 oneDNN", "bf16 torch.mm")
                    if k in t.values}
        lines.append("matmul ceilings (2048^3, GFLOP/s): " + ", ".join(
            f"{k} {v:,.0f} ({t.spread(k)})" for k, v in ceilings.items()))
        lines += ["", "| train (tokens/s) | stagegpt | --no-fast | HF fp32 | ratio | --no-fast "
                  "ratio | stagegpt GFLOP/s | of fp32 mm | of fp32 oneDNN | of bf16 mm |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for shape, dtype in (("seed", "fp32"), ("seed", "bf16"), ("char", "fp32")):
            if f"{shape} {dtype} stagegpt" not in t.values:
                lines.append(f"| {shape} {dtype} | not run: this CPU has no native bf16 "
                             "products |||||||||")
                continue
            ours, hf = t.median(f"{shape} {dtype} stagegpt"), t.median(f"{shape} fp32 HF")
            plain = t.median(f"{shape} {dtype} plain")
            gflops = ours * flops[shape] / 1e9
            fracs = [f"{gflops / ceilings[k]:.0%}" if k in ceilings else "n/a"
                     for k in ("fp32 torch.mm", "fp32 oneDNN", "bf16 torch.mm")]
            lines.append(f"| {shape} {dtype} | {ours:,.0f} | {plain:,.0f} | {hf:,.0f} "
                         f"| **{ours / hf:.2f}x** | {plain / hf:.2f}x | {gflops:,.0f} | "
                         + " | ".join(fracs) + " |")
        hf_gflops = t.median("seed fp32 HF") * flops["seed"] / 1e9
        lines.append("\npaired ratios (median of the per-round stagegpt/HF ratios): " + ", ".join(
            f"{shape} {dtype} {t.paired(f'{shape} {dtype} stagegpt', f'{shape} fp32 HF'):.2f}x"
            for shape, dtype in (("seed", "fp32"), ("seed", "bf16"), ("char", "fp32"))
            if f"{shape} {dtype} stagegpt" in t.values))
        fp32_ceiling = max(v for k, v in ceilings.items() if k.startswith("fp32"))
        lines.append(f"fp32 bound: a seed step run wholly at {fp32_ceiling:,.0f} GFLOP/s (this "
                     f"CPU's fastest fp32 product) would be {fp32_ceiling / hf_gflops:.2f}x HF, "
                     "the largest lead fp32 training can have here")
        lines.append(f"HF seed fp32: {hf_gflops:,.0f} GFLOP/s; spreads (min-max tokens/s): "
                     + ", ".join(f"{k} {t.spread(k)}" for k in t.values if "GFLOP" not in k
                                 and "mm" not in k and "oneDNN" not in k))
        ratios = results["train"]["char_ratios"]
        if ratios:
            plural = "es" if len(ratios) > 1 else ""
            lines.append(f"char: {len(ratios)} fresh process{plural}, stagegpt/HF per process "
                         + ", ".join(f"{r:.2f}x" for r in ratios) + "; the table pools their "
                         "trials")
        faults = results["train"]["faults"]
        lines.append("page faults per step (median): " + ", ".join(
            f"{k} {faults.median(k):,.0f}" for k in faults.values))
        first = results["train"]["losses"]
        lines.append("first-step losses (twins agree): " + ", ".join(
            f"{k} {v:.4f}" for k, v in first.items()))
    if "decode" in results:
        t = results["decode"]["trials"]
        ours, plain, hf = t.median("stagegpt"), t.median("plain"), t.median("HF")
        lines += ["", f"| decode (seed, batch 1, greedy, {DECODE_TOKENS} new tokens) "
                  "| stagegpt | --no-fast | HF generate | ratio | --no-fast ratio |",
                  "|---|---|---|---|---|---|",
                  f"| tokens/s | {ours:,.1f} | {plain:,.1f} | {hf:,.1f} | **{ours / hf:.2f}x** "
                  f"| {plain / hf:.2f}x |",
                  f"\npaired ratio (median of the per-round ratios): "
                  f"{t.paired('stagegpt', 'HF'):.2f}x; same greedy tokens (stagegpt, "
                  "--no-fast, HF): "
                  f"{results['decode']['same_tokens']}; spreads: stagegpt {t.spread('stagegpt')},"
                  f" --no-fast {t.spread('plain')}, HF {t.spread('HF')}"]
    if "rss" in results:
        lines += ["", "| peak RSS, seed-shape training step (MB) | " +
                  " | ".join(results["rss"]) + " |",
                  "|---|" + "---|" * len(results["rss"]),
                  "| fresh process, 2 steps | " +
                  " | ".join(f"{v:,.0f}" for v in results["rss"].values()) + " |"]
    if "prepare" in results:
        p = results["prepare"]
        lines.append(f"\nstagegpt prepare text --tokenizer char: {p['mb']:.1f} MB of text in "
                     f"{p['seconds']:.2f} s = {p['mb_per_s']:.1f} MB/s")
    lines.append("\nload average (1 min) before -> after each section: " + ", ".join(
        f"{k} {a:.2f} -> {b:.2f}" for k, (a, b) in results["load"].items()))
    return "\n".join(lines)


def machine() -> str:
    name = cpu.cpuinfo("model name") or platform.processor() or platform.machine()
    kernels = (f"{torch.backends.cpu.get_cpu_capability()} kernels, bf16 products "
               f"{'native' if cpu.native_bf16() else 'emulated'}")
    if torch.cuda.is_available():
        return f"{name}, {kernels}"
    return f"{name}, {os.cpu_count()} cores, no GPU, {kernels}"


def to_json(results: dict) -> dict:
    out = {}
    for section, value in results.items():
        if isinstance(value, dict) and "trials" in value:
            out[section] = {k: ({"median": {n: v.median(n) for n in v.values}, "runs": v.values}
                                if isinstance(v, Trials) else v) for k, v in value.items()}
        else:
            out[section] = value
    return out
