"""Quality against a known recipe: stagegpt stage 5 vs a plain nanoGPT-style GPT.

Both train on the same bins with the same recipe (4 layers, 4 heads, n_embd 128,
block 64, batch 12, dropout 0, AdamW lr 1e-3 with 100 warmup steps and cosine decay to
1e-4, 2000 steps); stagegpt runs as the real `stagegpt train` command (evals,
checkpoints and plots included in its wall time). Both final models are then scored on
the same fixed validation batches.

By default the comparison is paired: the plain model starts from the initial weights
`stagegpt train --seed S` starts from and draws the same batches, so any gap in val loss
comes from the implementations, not from the luck of the draw (different draws of the
same init alone move the final val loss by ~0.005 nats). `--own-init` lets the plain
model draw its own init (and decay its embeddings, as nanoGPT does); compare means over
several `--seeds` then.

    python benchmarks/recipe.py --data data/shakespeare_full_char --seeds 3
    # prepare the data first:
    stagegpt prepare shakespeare --variant full --tokenizer char --out data/shakespeare_full_char
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stagegpt import ModelConfig, build_model
from stagegpt.data.datasets import load_split, read_meta
from stagegpt.interop import load_checkpoint
from stagegpt.train.optim import param_groups

RECIPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, lr=1e-3,
              min_lr=1e-4, warmup_steps=100, steps=2000)


class PlainGPT(nn.Module):
    """The textbook GPT: full (B, T, V) logits and F.cross_entropy, nothing fused."""

    def __init__(self, vocab: int, T: int, C: int, L: int, H: int):
        super().__init__()
        self.H = H
        self.tok = nn.Embedding(vocab, C)
        self.pos = nn.Embedding(T, C)
        self.layers = nn.ModuleList(nn.ModuleDict(dict(
            n1=nn.LayerNorm(C), qkv=nn.Linear(C, 3 * C), out=nn.Linear(C, C),
            n2=nn.LayerNorm(C), up=nn.Linear(C, 4 * C), down=nn.Linear(4 * C, C),
        )) for _ in range(L))
        self.norm = nn.LayerNorm(C)
        self.head = nn.Linear(C, vocab, bias=False)
        self.head.weight = self.tok.weight
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * L) if name.endswith(("out.weight", "down.weight")) \
                    else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        B, T = idx.shape
        x = self.tok(idx) + self.pos(torch.arange(T))
        for layer in self.layers:
            q, k, v = layer["qkv"](layer["n1"](x)).chunk(3, dim=-1)
            q, k, v = (t.view(B, T, self.H, -1).transpose(1, 2) for t in (q, k, v))
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + layer["out"](a.transpose(1, 2).reshape(B, T, -1))
            x = x + layer["down"](F.gelu(layer["up"](layer["n2"](x)), approximate="tanh"))
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def batch(data: np.ndarray, B: int, T: int, g: torch.Generator):
    ix = torch.randint(len(data) - T, (B,), generator=g).numpy()  # window i..i+T
    rows = np.stack([data[i:i + T + 1] for i in ix]).astype(np.int64)
    return torch.from_numpy(rows[:, :-1]), torch.from_numpy(rows[:, 1:])


def lr_at(step: int, r: dict = RECIPE) -> float:
    if step < r["warmup_steps"]:
        return r["lr"] * (step + 1) / r["warmup_steps"]
    p = (step - r["warmup_steps"]) / (r["steps"] - r["warmup_steps"])
    return r["min_lr"] + 0.5 * (1 + math.cos(math.pi * p)) * (r["lr"] - r["min_lr"])


def initial_plain_model(vocab: int, seed: int, own_init: bool, r: dict = RECIPE) -> PlainGPT:
    """PlainGPT drawing its own GPT-2 init, or holding stagegpt's initial weights for `seed`."""
    torch.manual_seed(seed)
    model = PlainGPT(vocab, r["block_size"], r["n_embd"], r["n_layer"], r["n_head"])
    if own_init:
        return model
    config = ModelConfig(vocab_size=vocab, block_size=r["block_size"], n_embd=r["n_embd"],
                         n_layer=r["n_layer"], n_head=r["n_head"], dropout=0.0)
    torch.manual_seed(seed)  # as `stagegpt train --seed` does before building its model
    ours = build_model(5, config).state_dict()
    renamed = {"n1": "ln_1", "qkv": "attn.c_attn", "out": "attn.c_proj", "n2": "ln_2",
               "up": "mlp.c_fc", "down": "mlp.c_proj"}
    top = {"tok": "wte", "pos": "wpe", "norm": "ln_f"}
    with torch.no_grad():
        for name, param in model.named_parameters():
            parts = name.split(".")
            if parts[0] == "layers":  # layers.i.module.leaf -> h.i.<gpt-2 name>.leaf
                source = f"h.{parts[1]}.{renamed[parts[2]]}.{parts[3]}"
            else:
                source = f"{top[parts[0]]}.{parts[1]}"
            param.copy_(ours[source])
    return model


def train_plain(data_dir: Path, vocab: int, seed: int, own_init: bool,
                r: dict = RECIPE) -> tuple[nn.Module, float]:
    model = initial_plain_model(vocab, seed, own_init, r)
    if own_init:  # nanoGPT decays every matrix, embeddings included
        decay = [p for p in model.parameters() if p.dim() >= 2]
        other = [p for p in model.parameters() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": 0.1},
                  {"params": other, "weight_decay": 0.0}]
    else:  # stagegpt's groups: no decay on the (tied) embeddings
        groups = param_groups(model, 0.1)
    opt = torch.optim.AdamW(groups, lr=r["lr"], betas=(0.9, 0.99))
    train = load_split(data_dir, "train")
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(r["steps"]):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, r)
        x, y = batch(train, r["batch_size"], r["block_size"], g)
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model, time.perf_counter() - start


def stagegpt_train_args(data_dir: Path, out: Path, seed: int, r: dict = RECIPE) -> list[str]:
    """`stagegpt train` at recipe `r`: stage 5, evals every 500 steps, checkpoints every 1000."""
    return ["train", "--stage", "5", "--data", str(data_dir), "--out", str(out),
            "--preset", "small", "--n-layer", str(r["n_layer"]), "--n-head", str(r["n_head"]),
            "--n-embd", str(r["n_embd"]), "--block-size", str(r["block_size"]),
            "--batch-size", str(r["batch_size"]), "--dropout", "0", "--lr", str(r["lr"]),
            "--min-lr", str(r["min_lr"]), "--warmup-steps", str(r["warmup_steps"]),
            "--max-steps", str(r["steps"]), "--eval-every", "500", "--ckpt-every", "1000",
            "--seed", str(seed), "--no-progress"]


def train_stagegpt(data_dir: Path, out: Path, seed: int, r: dict = RECIPE) -> float:
    """Seconds of a `stagegpt train` process at recipe `r`, from start to exit."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "stagegpt", *stagegpt_train_args(data_dir, out, seed, r)],
                   check=True)
    return time.perf_counter() - start


@torch.no_grad()
def val_loss(loss_fn, data_dir: Path, batches: int = 200, r: dict = RECIPE) -> float:
    val = load_split(data_dir, "val")
    g = torch.Generator().manual_seed(7)
    losses = [loss_fn(*batch(val, r["batch_size"], r["block_size"], g)).item()
              for _ in range(batches)]
    return sum(losses) / len(losses)


def run_pair(data_dir: Path, vocab: int, seed: int,
             own_init: bool) -> dict[str, tuple[float, float]]:
    """(val loss, wall time) of both models trained from `seed`."""
    with tempfile.TemporaryDirectory() as tmp:
        ours_time = train_stagegpt(data_dir, Path(tmp) / "run", seed)
        model = load_checkpoint(Path(tmp) / "run").model
        ours = val_loss(lambda x, y: model(x, y)[1], data_dir)
    plain_model, plain_time = train_plain(data_dir, vocab, seed, own_init)
    plain = val_loss(plain_model.eval(), data_dir)
    return {"stagegpt stage 5": (ours, ours_time), "plain nanoGPT-style": (plain, plain_time)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=1,
                        help="train both models from this many seeds (--first-seed, the next, "
                             "...) and compare the means; single runs vary by ~0.005 nats")
    parser.add_argument("--first-seed", type=int, default=1337)
    parser.add_argument("--own-init", action="store_true",
                        help="the plain model draws its own init and decays its embeddings "
                             "(unpaired: compare means over several --seeds)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    vocab = read_meta(args.data)["vocab_size"]
    results: dict[str, list[tuple[float, float]]] = {}
    print(f"{'':<22}{'seed':>6}{'val loss':>10}{'wall time':>12}", flush=True)
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for name, (loss, wall) in run_pair(args.data, vocab, seed, args.own_init).items():
            results.setdefault(name, []).append((loss, wall))
            print(f"{name:<22}{seed:>6}{loss:>10.4f}{wall:>11.1f}s", flush=True)
    means = {name: [sum(column) / len(column) for column in zip(*rows, strict=True)]
             for name, rows in results.items()}
    for name, (loss, wall) in means.items():
        print(f"{name:<22}{'mean':>6}{loss:>10.4f}{wall:>11.1f}s")
    (ours, ours_time), (plain, plain_time) = means.values()
    print(f"ratio (plain / stagegpt): val {plain / ours:.3f}, time {plain_time / ours_time:.2f}x")


if __name__ == "__main__":
    main()
