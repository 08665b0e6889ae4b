"""stagegpt vs Hugging Face GPT-2 on this CPU: training, decoding, memory and data preparation.

    make bench                                  # everything (~4 minutes on 2 cores)
    stagegpt bench --quick
    stagegpt bench --only train --rounds 9

Every comparison runs both sides in one process, alternating trial by trial (ours, then
Hugging Face's, then ours again, ...), so load from other processes hits both alike; each
figure is the median over the rounds, and each ratio the ratio of two such medians; the
report adds the paired ratios (the median of the per-round ratios, steadier on a shared
host) and the fp32 bound (the lead over Hugging Face a step run wholly at this CPU's
fastest fp32 product would have). The char shape runs in 5 fresh processes, their
trials pooled: how fast a process runs its short steps varies from process to process.
The models are random-init stage 5 `GPT` and `transformers.GPT2LMHeadModel` (sdpa
attention) of the same shape holding the same weights, each trained with the same step:
forward, backward, grad-norm clip 1.0, AdamW from `stagegpt.train.optim.make_optimizer`,
zero_grad. Ours runs its training forward (`model(x, y, return_logits=False)`, as
`Trainer` does); Hugging Face's is `model(input_ids=x, labels=x)`. The bf16 rows run ours
under `torch.autocast` (bf16), as `TrainConfig(dtype="bfloat16")` does, and compare it
with Hugging Face in fp32; they run only on CPUs with native bf16 products (AVX-512 BF16
or AMX: `stagegpt.fast.cpu.native_bf16`), since elsewhere PyTorch emulates them hundreds
of times slower than fp32 and a round would take hours.

Achieved GFLOP/s counts 6N + 12*L*T*C FLOPs per token (`stagegpt.tools.inspection.flops_per_token`)
and is set against matmul ceilings measured in the same rounds: a 2048^3 fp32 `torch.mm`
(MKL here), the same product through oneDNN (`F.linear` on a `Tensor.to_mkldnn()` input),
and a bf16 `torch.mm`. Peak RSS is measured in a fresh subprocess (`resource.getrusage`).
The load average is printed before and after each section: other processes on the
machine slow both sides, but not always equally. `benchmarks/decode.py` has more decoding
variants (no cache, other presets).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from stagegpt import ModelConfig, TrainConfig, build_model, generate
from stagegpt.data.corpora import text_corpus
from stagegpt.data.prepare import prepare_corpus
from stagegpt.fast import accelerate, cpu
from stagegpt.tools.bench_report import DECODE_TOKENS, Trials, report, to_json
from stagegpt.tools.inspection import flops_per_token
from stagegpt.train.optim import make_optimizer

SEED = ModelConfig.from_preset("seed")  # 12 layers, 4 heads, n_embd 256, T 256, vocab 50,257
CHAR = ModelConfig(vocab_size=65, block_size=64, n_embd=128, n_layer=4, n_head=4)
SHAPES = {"seed": (SEED, 8), "char": (CHAR, 12)}  # config, batch size
PREPARE_MB = 8


# ---- models and training steps ---------------------------------------------------------


def hf_twin(model):
    """GPT2LMHeadModel (sdpa) of `model`'s shape holding the very same weights."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()  # no notes about the default loss on every model

    from stagegpt.interop.gpt2 import hf_config, weights_to_hf

    config = GPT2Config(**hf_config(model.config), attn_implementation="sdpa")
    twin = GPT2LMHeadModel(config)
    missing, unexpected = twin.load_state_dict(weights_to_hf(model), strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
    assert twin.lm_head.weight.data_ptr() == twin.transformer.wte.weight.data_ptr()
    assert twin.config._attn_implementation == "sdpa"
    return twin


def autocast(dtype: str):
    if dtype == "bfloat16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step_fn(model, forward: Callable, x, y, dtype: str = "float32") -> Callable[[], float]:
    """One optimizer step as `Trainer._train_step` takes it (grad_accum 1, one process)."""
    optimizer = make_optimizer(model, TrainConfig())
    model.train()

    def step() -> float:
        with autocast(dtype):
            loss = forward(x, y)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def ours_forward(model):
    """The Trainer's training forward: through `stagegpt.fast` (no full logits)."""
    fast = accelerate(model)
    return lambda x, y: fast(x, y, return_logits=False)[1]


def plain_forward(model):
    """The plain model as written (`--no-fast`)."""
    return lambda x, y: model(x, y)[1]


def copy_of(model):
    twin = build_model(model.stage, model.config)
    twin.load_state_dict(model.state_dict())
    return twin


def hf_forward(model):
    return lambda x, y: model(input_ids=x, labels=x).loss


def make_pair(config: ModelConfig, batch: int):
    torch.manual_seed(0)
    ours = build_model(5, config)
    hf = hf_twin(ours)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, config.vocab_size, (batch, config.block_size), generator=g)
    y = torch.roll(x, -1, dims=1)  # ours predicts x[t+1] at t, as HF's shifted labels do
    return ours, hf, x, y


# ---- matmul ceilings ---------------------------------------------------------------------


def matmul_probes(n: int = 2048) -> dict[str, Callable[[], float]]:
    """GFLOP/s of one n x n x n product on each path; each call returns one measurement."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    flops = 2 * n**3
    probes = {"fp32 torch.mm": lambda: torch.mm(a, b, out=out)}
    try:  # F.linear on a to_mkldnn() input runs oneDNN's product, as stagegpt.onednn does
        am, bt = a.to_mkldnn(), b.t().contiguous()
        torch.nn.functional.linear(am, bt)
        probes["fp32 oneDNN"] = lambda: torch.nn.functional.linear(am, bt)
    except RuntimeError:  # a build without oneDNN
        pass
    if cpu.native_bf16():  # emulated, one 2048^3 product would take ~30 s
        ab, bb = a.bfloat16(), b.bfloat16()
        probes["bf16 torch.mm"] = lambda: torch.mm(ab, bb)

    def timed(fn):
        def measure() -> float:
            start = time.perf_counter()
            fn()
            return flops / (time.perf_counter() - start) / 1e9
        return measure

    return {name: timed(fn) for name, fn in probes.items()}


# ---- interleaved trials -------------------------------------------------------------------


def rotated(names: list[str], r: int) -> list[str]:
    """Round r's order: each shape's runs rotated by r, so no run always follows the same one
    (a step right after HF's, which frees ~2 GB, runs measurably slower)."""
    shapes = list(dict.fromkeys(n.split()[0] for n in names))
    order = []
    for shape in shapes:
        group = [n for n in names if n.split()[0] == shape]
        order += group[r % len(group):] + group[:r % len(group)]
    return order


def time_steps(step: Callable[[], float], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - start


def bench_train(rounds: int, log: Callable[[str], None], processes: int, threads: int) -> dict:
    """Train tokens/s for each shape and dtype, ours and HF's, alternating within each round.

    The seed shape runs here. The char shape's steps take ~30 ms, and how fast a fresh
    process runs them varies from process to process: by the luck of glibc's heap
    trimming, a process's step costs either almost no page faults or 2,000-4,600 of them
    (~1.2 µs each), and the ratio ranged 1.30-1.62 over about 40 processes here. So its
    trials run in `processes` fresh processes, each interleaving as this one does, and
    are pooled.
    """
    results = interleaved_trials(["seed"], rounds, log, probes=True)
    results["char_ratios"] = []
    for i in range(processes):
        child = char_child_trials(rounds, threads)
        results["trials"].merge(child["trials"])
        results["faults"].merge(child["faults"])
        results["flops"].update(child["flops"])
        results["losses"].update(child["losses"])
        ratio = (statistics.median(child["trials"]["char fp32 stagegpt"])
                 / statistics.median(child["trials"]["char fp32 HF"]))
        results["char_ratios"].append(ratio)
        log(f"  char process {i + 1}/{processes}: stagegpt/HF {ratio:.2f}x")
    return results


def char_child_trials(rounds: int, threads: int) -> dict:
    return run_child("--char-child", "--rounds", str(rounds), "--threads", str(threads))


def run_child(*flags: str) -> dict:
    """`stagegpt bench FLAGS` in a fresh interpreter; the JSON its last line prints."""
    out = subprocess.run([sys.executable, "-m", "stagegpt", "bench", *flags], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def char_child(rounds: int) -> None:
    """Run in a fresh interpreter: the char shape's interleaved rounds, printed as JSON."""
    results = interleaved_trials(["char"], rounds, lambda msg: None, probes=False)
    print(json.dumps({"trials": results["trials"].values, "faults": results["faults"].values,
                      "flops": results["flops"], "losses": results["losses"]}))


def interleaved_trials(shapes: list[str], rounds: int, log: Callable[[str], None],
                       probes: bool) -> dict:
    """`rounds` rounds over `shapes`: each run once per round, in a rotating order."""
    runs: dict[str, tuple[Callable[[], float], int, int]] = {}  # name -> (step, tokens, steps)
    flops: dict[str, int] = {}
    losses: dict[str, float] = {}
    for shape in shapes:
        config, batch = SHAPES[shape]
        ours, hf, x, y = make_pair(config, batch)
        flops[shape] = flops_per_token(ours)["train"]
        tokens = batch * config.block_size
        steps = 1 if shape == "seed" else 40  # keep each trial at least ~1 s
        for dtype in ("fp32", "bf16") if shape == "seed" and cpu.native_bf16() else ("fp32",):
            dt = "bfloat16" if dtype == "bf16" else "float32"
            for side, forward in (("stagegpt", ours_forward), ("plain", plain_forward)):
                model = copy_of(ours)
                runs[f"{shape} {dtype} {side}"] = (
                    train_step_fn(model, forward(model), x, y, dt), tokens, steps)
        runs[f"{shape} fp32 HF"] = (train_step_fn(hf, hf_forward(hf), x, y), tokens, steps)
    ceilings = matmul_probes() if probes else {}
    for name, (step, _, _) in runs.items():  # warm-up; the first losses check the twins agree
        losses[name] = step()
        step()
    trials, faults = Trials(), Trials()
    for r in range(rounds):
        for name, probe in ceilings.items():
            trials.add(name, max(probe() for _ in range(3)))
        for name in rotated(list(runs), r):
            step, tokens, steps = runs[name]
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            trials.add(name, tokens * steps / time_steps(step, steps))
            faults.add(name, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps)
        log(f"  train round {r + 1}/{rounds}: " + ", ".join(
            f"{k} {v[-1]:,.0f}" for k, v in trials.values.items()))
    return {"trials": trials, "flops": flops, "losses": losses, "faults": faults}


def bench_decode(rounds: int, log: Callable[[str], None]) -> dict:
    """Greedy decoding of DECODE_TOKENS tokens, batch 1: stagegpt `generate` vs HF `generate`."""
    torch.manual_seed(0)
    ours = build_model(5, SEED).eval()
    hf = hf_twin(ours).eval()
    prompt = torch.tensor([[50256 % SEED.vocab_size]])

    def run_ours() -> torch.Tensor:
        return generate(ours, prompt, DECODE_TOKENS, temperature=0)

    def run_plain() -> torch.Tensor:
        return generate(ours, prompt, DECODE_TOKENS, temperature=0, fast=False)

    def run_hf() -> torch.Tensor:
        with torch.inference_mode():
            return hf.generate(prompt, max_new_tokens=DECODE_TOKENS, min_new_tokens=DECODE_TOKENS,
                               do_sample=False, use_cache=True, pad_token_id=0)

    # warm-up, and a check that all three decode alike
    same = torch.equal(run_ours(), run_hf()) and torch.equal(run_ours(), run_plain())
    runs = {"stagegpt": run_ours, "plain": run_plain, "HF": run_hf}
    trials = Trials()
    for r in range(rounds):
        for name in rotated([f"decode {n}" for n in runs], r):
            name = name.split()[1]
            start = time.perf_counter()
            runs[name]()
            trials.add(name, DECODE_TOKENS / (time.perf_counter() - start))
        log(f"  decode round {r + 1}/{rounds}: " + ", ".join(
            f"{n} {trials.values[n][-1]:.1f}" for n in runs) + " tok/s")
    return {"trials": trials, "same_tokens": same}


# ---- peak memory ----------------------------------------------------------------------------


def rss_child(which: str) -> None:
    """Run in a fresh interpreter: two seed-shape training steps, then print peak RSS (MB)."""
    dtype = "bfloat16" if which.endswith("bf16") else "float32"
    config, batch = SHAPES["seed"]
    torch.manual_seed(0)
    model = build_model(5, config)
    if which.startswith("HF"):
        model = hf_twin(model)
        forward = hf_forward(model)
    else:
        forward = ours_forward(model)
    x = torch.randint(0, config.vocab_size, (batch, config.block_size))
    step = train_step_fn(model, forward, x, torch.roll(x, -1, dims=1), dtype)
    for _ in range(2):  # the second step holds AdamW's state as well
        step()
    hwm = None  # the kernel's own high-water mark of this process image, as a cross-check
    with contextlib.suppress(OSError, ValueError):
        status = Path("/proc/self/status").read_text()
        hwm = int(status.split("VmHWM:")[1].split()[0]) / 1024
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "vm_hwm_mb": hwm}))


def bench_rss(threads: int) -> dict[str, float]:
    """Linux carries ru_maxrss across fork and exec, so run this while the parent is small."""
    peaks = {}
    for which in ("stagegpt fp32", "stagegpt bf16", "HF fp32"):
        child = run_child("--rss-child", which, "--threads", str(threads))
        peaks[which] = child["peak_rss_mb"]
        if child["vm_hwm_mb"] is not None:
            peaks[which] = max(peaks[which], child["vm_hwm_mb"])
    return peaks


# ---- data preparation ------------------------------------------------------------------------


def bench_prepare(megabytes: int) -> dict:
    """`stagegpt prepare text --tokenizer char` (reading, tokenizing, writing the data dir)
    on generated English-like text, in MB/s."""
    g = torch.Generator().manual_seed(0)
    words = ["the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was",
             "with", "be", "by", "on", "not", "he", "this", "are", "or", "his", "from", "at",
             "which", "but", "have", "an", "had", "they", "you", "were", "their", "one", "all",
             "we", "can", "her", "has", "there", "been", "if", "more", "when", "will", "would"]
    ids = torch.randint(0, len(words), (megabytes * 200_000,), generator=g).tolist()
    lines = [" ".join(words[i] for i in ids[j:j + 12]).capitalize() + "."
             for j in range(0, len(ids), 12)]
    text = "\n".join(lines) + "\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.txt"
        path.write_text(text, encoding="utf-8")
        size = path.stat().st_size
        start = time.perf_counter()
        prepare_corpus(text_corpus([path]), "char", Path(tmp) / "data", progress=False)
        elapsed = time.perf_counter() - start
    return {"mb": size / 1e6, "seconds": elapsed, "mb_per_s": size / 1e6 / elapsed}


def run(args: argparse.Namespace) -> int:
    """`stagegpt bench` with its checked flags (see `stagegpt.cli.bench`)."""
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(args.rss_child)
        return 0
    args.rounds = args.rounds or (3 if args.quick else 7)
    if args.char_child:
        char_child(args.rounds)
        return 0

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    results: dict = {"load": {}}
    runs = {"rss": ("peak RSS (fresh subprocesses)", lambda: bench_rss(args.threads)),
            "train": ("training (seed fp32, seed bf16, char fp32; ours and HF alternating)",
                      lambda: bench_train(args.rounds, log, args.char_processes, args.threads)),
            "decode": ("decoding", lambda: bench_decode(args.rounds, log)),
            "prepare": ("prepare", lambda: bench_prepare(2 if args.quick else PREPARE_MB))}
    for section, (what, run_section) in runs.items():
        if section in sections:
            before = os.getloadavg()[0]
            log(f"{what} ... (load average {before:.2f})")
            results[section] = run_section()
            results["load"][section] = (before, os.getloadavg()[0])
    print(report(results, args))
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(results), indent=2) + "\n")
    return 0
