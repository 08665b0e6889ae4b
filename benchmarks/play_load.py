"""Load check of `stagegpt play`: many clients streaming at once from one server.

Starts the real server (`python -m stagegpt play --ckpt DIR --port 0`) in a subprocess,
then N clients each POST /api/generate at the same moment (the same prompt, seed = the
client's number) and read their server-sent events. Checks that every stream completes
and that each client got exactly the tokens `generate()` gives for its seed (no stream
mixed up with another's), and reports time to first token (p50, p95) and tokens/s.

    .venv/bin/python benchmarks/play_load.py                     # 20 clients x 64 tokens
    .venv/bin/python benchmarks/play_load.py --ckpt runs/ladder/stage5 --threads 2

Without --ckpt it serves a fresh (untrained) stage-5 char model of the `small` preset's
shape (what `make demo` trains: 4 blocks, 4 heads, width 128, context 64): the timing
does not depend on what the weights have learned.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from stagegpt import ModelConfig, build_model, generate
from stagegpt.data.tokenizers import CharTokenizer
from stagegpt.interop import load_checkpoint
from stagegpt.train.checkpoints import save_checkpoint

CHARS = "\n !&',-.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def fresh_char_model(directory: Path) -> Path:
    tokenizer = CharTokenizer(CHARS)
    config = ModelConfig.from_preset("small", vocab_size=tokenizer.vocab_size)
    torch.manual_seed(0)
    return save_checkpoint(directory / "stage5", build_model(5, config).eval(), tokenizer)


def start_server(ckpt: Path, threads: int, queue: int) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "stagegpt", "play", "--ckpt", str(ckpt), "--port", "0",
               "--threads", str(threads), "--queue", str(queue)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    line = server.stdout.readline()
    if " at http://" not in line:
        server.kill()
        sys.exit(f"the server did not start: {line!r}")
    return server, line.split(" at ")[1].split()[0]


async def one_client(client: httpx.AsyncClient, url: str, body: dict, start: float) -> dict:
    ids, first, name = [], None, None
    async with client.stream("POST", url + "api/generate", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: ") and name == "token":
                first = first or time.perf_counter()
                ids.append(json.loads(line[len("data: "):])["id"])
            elif name == "error":
                raise RuntimeError(line)
    return {"seed": body["seed"], "ids": ids, "first": first - start,
            "end": time.perf_counter() - start}


async def load(url: str, clients: int, tokens: int, prompt: str) -> tuple[list[dict], float]:
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=None, limits=limits) as client:
        start = time.perf_counter()
        bodies = [{"prompt": prompt, "max_new_tokens": tokens, "seed": i, "temperature": 1.0}
                  for i in range(clients)]
        results = await asyncio.gather(*(one_client(client, url, b, start) for b in bodies))
        return results, time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", help="checkpoint to serve (default: a fresh stage-5 char model)")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.ckpt) if args.ckpt else fresh_char_model(Path(tmp))
        server, url = start_server(ckpt, args.threads, queue=max(32, args.clients))
        try:
            asyncio.run(load(url, 2, 4, args.prompt))  # warm-up
            results, wall = asyncio.run(load(url, args.clients, args.tokens, args.prompt))
        finally:
            server.terminate()
            server.wait(timeout=30)
        model, tokenizer = (c := load_checkpoint(ckpt)).model, c.tokenizer
    torch.set_num_threads(args.threads)
    prompt = torch.tensor([tokenizer.encode(args.prompt)])
    mixed = [r["seed"] for r in results if r["ids"] != generate(
        model, prompt, args.tokens, 1.0, seed=r["seed"])[0, prompt.size(1):].tolist()]
    complete = sum(len(r["ids"]) == args.tokens for r in results)
    firsts = [r["first"] for r in results]
    rates = [args.tokens / (r["end"] - r["first"]) for r in results]
    print(f"stage {c.stage} model, {model.num_params():,} parameters; server --threads "
          f"{args.threads}; {args.clients} clients x {args.tokens} tokens, prompt "
          f"{args.prompt!r}")
    print(f"complete streams: {complete}/{args.clients}; streams that differ from "
          f"generate() with their seed: {len(mixed)} {mixed or ''}")
    print(f"time to first token: p50 {statistics.median(firsts) * 1000:.0f} ms, "
          f"p95 {percentile(firsts, 0.95) * 1000:.0f} ms")
    print(f"tokens/s: {args.clients * args.tokens / wall:,.0f} in all "
          f"({args.clients * args.tokens} tokens in {wall:.2f} s); per stream, after its "
          f"first token: median {statistics.median(rates):,.0f}")


if __name__ == "__main__":
    main()
