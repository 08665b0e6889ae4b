"""Decode speed: stagegpt with and without the KV cache, and Hugging Face GPT-2 with its cache.

Random-init stage 5 models, batch 1, greedy, a one-token prompt, 2 threads. The runs are
interleaved (ours cached, ours uncached, HF) so that load from other processes hits all of
them alike; it reports the best and the median of `--repeats` rounds.

    .venv/bin/python benchmarks/decode.py                      # seed preset, 256 tokens
    .venv/bin/python benchmarks/decode.py --preset gpt2 --tokens 1024 --uncached-tokens 128
    .venv/bin/python benchmarks/decode.py --bf16 --no-hf --threads 1   # bf16 weights too
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch

from stagegpt import ModelConfig, build_model, generate


def hf_model(config: ModelConfig):
    """An HF GPT2LMHeadModel of the same shape (random init); None without transformers."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None
    hf_config = GPT2Config(vocab_size=config.vocab_size, n_positions=config.block_size,
                           n_embd=config.n_embd, n_layer=config.n_layer, n_head=config.n_head,
                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(hf_config).eval()


def time_ours(model, prompt: torch.Tensor, n: int, use_cache: bool) -> float:
    start = time.perf_counter()
    out = generate(model, prompt, n, temperature=0, use_cache=use_cache)
    elapsed = time.perf_counter() - start
    assert out.size(1) == prompt.size(1) + n
    return n / elapsed


def time_hf(model, prompt: torch.Tensor, n: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             use_cache=True, pad_token_id=0)
    elapsed = time.perf_counter() - start
    assert out.size(1) == prompt.size(1) + n
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="seed")
    parser.add_argument("--tokens", type=int, default=256, help="new tokens per cached run")
    parser.add_argument("--uncached-tokens", type=int, default=None,
                        help="new tokens per uncached run (default: --tokens)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-hf", action="store_true", help="skip the transformers comparison")
    parser.add_argument("--bf16", action="store_true",
                        help="also decode with the weights in bfloat16 (`sample --dtype "
                             "bfloat16`), cached")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ModelConfig.from_preset(args.preset)
    model = build_model(5, config).eval()
    hf = None if args.no_hf else hf_model(config)
    uncached_n = args.uncached_tokens or args.tokens
    prompt = torch.tensor([[50256 % config.vocab_size]])

    runs = {f"stagegpt, KV cache ({args.tokens} tokens)":
            lambda: time_ours(model, prompt, args.tokens, True),
            f"stagegpt, no cache ({uncached_n} tokens)":
            lambda: time_ours(model, prompt, uncached_n, False)}
    if args.bf16:
        bf16 = copy.deepcopy(model).to(torch.bfloat16)
        runs[f"stagegpt, KV cache, bfloat16 weights ({args.tokens} tokens)"] = (
            lambda: time_ours(bf16, prompt, args.tokens, True))
        time_ours(bf16, prompt, 8, True)
    if hf is not None:
        runs[f"transformers GPT2LMHeadModel.generate, cache ({args.tokens} tokens)"] = (
            lambda: time_hf(hf, prompt, args.tokens))
    time_ours(model, prompt, 8, True)  # warm up every path once (allocator, first calls)
    time_ours(model, prompt, 8, False)
    if hf is not None:
        time_hf(hf, prompt, 8)

    print(f"preset {args.preset}: stage 5, {model.num_params():,} parameters, batch 1, greedy, "
          f"{args.threads} threads, torch {torch.__version__}; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(args.repeats):
        for name, run in runs.items():
            rates[name].append(run())
        print(f"  round {i + 1}: " + ", ".join(f"{v[-1]:.1f}" for v in rates.values())
              + f" tok/s (load average {os.getloadavg()[0]:.1f})", flush=True)
    print(f"over {args.repeats} rounds (best = least disturbed by other processes):")
    for name, values in rates.items():
        best, med = max(values), statistics.median(values)
        print(f"  {name:<62} best {best:7.1f} tok/s ({1000 / best:7.2f} ms/token), "
              f"median {med:7.1f}")

if __name__ == "__main__":
    main()
