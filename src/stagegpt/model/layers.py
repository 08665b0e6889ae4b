"""The building blocks the stages share: attention, MLP, the transformer block, a KV cache.

Names follow GPT-2 (`c_attn`, `c_proj`, `c_fc`, `ln_1`, `ln_2`) so its weights map one to one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KVCache(nn.Module):
    """Keys and values of one attention layer, allocated once for a whole generation.

    `update` writes the new positions in place and returns views of everything cached so
    far, so decoding one token costs one small copy instead of a growing `torch.cat`.
    """

    def __init__(self, batch: int, n_head: int, max_len: int, head_dim: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        super().__init__()
        shape = (batch, n_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def drop_oldest(self, n: int = 1) -> None:
        """Forget the first n positions: everything after them moves n slots down."""
        self.k[:, :, :-n] = self.k[:, :, n:].clone()
        self.v[:, :, :-n] = self.v[:, :, n:].clone()

    def update(self, k: Tensor, v: Tensor, start: int) -> tuple[Tensor, Tensor]:
        end = start + k.size(2)
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]  # (B, heads, end, hd): stage 9 n_kv_head


def causal_mask(q_len: int, k_len: int, device: torch.device) -> Tensor:
    """True where query i (the last q_len of k_len positions) may attend to key j."""
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    return torch.arange(k_len, device=device)[None, :] <= q_pos  # (q_len, k_len)


def attention_scores(q: Tensor, k: Tensor) -> Tensor:
    """Scaled dot products q.k / sqrt(hd), -inf where a query would see the future.

    q: (B, nh, Tq, hd), k: (B, nh, Tk, hd) with Tq <= Tk; the queries are the last Tq
    positions.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, Tq, Tk)
    return scores.masked_fill(~causal_mask(q.size(-2), k.size(-2), q.device), float("-inf"))


def reference_attention(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Causal attention written out step by step; returns (output, weights).

    The path the notebooks show and the tests compare the fused kernel against.
    """
    weights = torch.softmax(attention_scores(q, k), dim=-1)  # (B, nh, Tq, Tk)
    return weights @ v, weights  # (B, nh, Tq, hd)


class MultiHeadAttention(nn.Module):
    """Causal self-attention with `n_head` heads; `n_head=1` is stages 3-4's single head.

    It attends through PyTorch's fused kernel, or with `explicit = True` through the
    softmax written out, whose weights pass through the `softmax` module, where a forward
    hook can see them (see `explicit_attention`). Both compute the same function.
    With `n_kv_head` < `n_head` (stage 9) each key/value head serves a group of query
    heads: fewer keys and values to compute and to cache.
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True,
                 n_kv_head: int | None = None):
        super().__init__()
        self.n_head, self.n_kv_head = n_head, n_kv_head or n_head
        kv_width = self.n_kv_head * (n_embd // n_head)
        self.c_attn = nn.Linear(n_embd, n_embd + 2 * kv_width, bias=bias)  # q, k, v at once
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.softmax = nn.Softmax(dim=-1)
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)
        self.explicit = False

    def forward(self, x: Tensor, cache: KVCache | None = None, start: int = 0) -> Tensor:
        """x (B, T, C) at positions start..start+T-1 -> (B, T, C). With a cache, the keys
        and values of the earlier positions come from it, and this call's are added."""
        B, T, C = x.shape
        hd, nkv = C // self.n_head, self.n_kv_head
        q, k, v = self.c_attn(x).split([C, nkv * hd, nkv * hd], dim=2)  # (B, T, C), 2 x kv
        q = q.view(B, T, self.n_head, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        v = v.view(B, T, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        q, k = self.place(q, k, start)
        if cache is not None:
            k, v = cache.update(k, v, start)  # (B, nkv, start + T, hd)
        if nkv < self.n_head:  # each key/value head serves n_head / nkv query heads
            k = k.repeat_interleave(self.n_head // nkv, dim=1)  # (B, nh, Tk, hd)
            v = v.repeat_interleave(self.n_head // nkv, dim=1)  # (B, nh, Tk, hd)
        y = self.attend_explicitly(q, k, v) if self.explicit else self.attend(q, k, v)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C): heads side by side again
        return self.resid_dropout(self.c_proj(y))

    def place(self, q: Tensor, k: Tensor, start: int) -> tuple[Tensor, Tensor]:
        """Where positions enter attention: nowhere here (they were added to the input by
        learned embeddings); `RotaryAttention` rotates q and k instead."""
        return q, k

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """The fused kernel: (B, nh, Tq, hd) queries over (B, nh, Tk, hd) keys and values."""
        p = self.attn_dropout.p if self.training else 0.0
        if q.size(-2) == k.size(-2):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        mask = causal_mask(q.size(-2), k.size(-2), q.device)  # queries after a cached prefix
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)

    def attend_explicitly(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        weights = self.softmax(attention_scores(q, k))  # (B, nh, Tq, Tk), rows sum to 1
        return self.attn_dropout(weights) @ v  # (B, nh, Tq, hd)


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim: a 90-degree turn of each
    pair (x1[i], x2[i])."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class RotaryAttention(MultiHeadAttention):
    """Attention with rotary position embeddings (stages 7-9): each pair of q and k
    features is turned by an angle proportional to the token's position, one frequency
    per pair, so q.k depends on positions only through their difference."""

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True,
                 n_kv_head: int | None = None, theta: float = 10_000.0):
        super().__init__(n_embd, n_head, dropout, bias, n_kv_head)
        self.theta = theta

    def place(self, q: Tensor, k: Tensor, start: int) -> tuple[Tensor, Tensor]:
        pos = torch.arange(start, start + q.size(-2), device=q.device)  # (T,)
        return self.rotate(q, pos), self.rotate(k, pos)

    def rotate(self, x: Tensor, pos: Tensor) -> Tensor:
        """Turn each feature pair of x (..., T, hd) by its angle at positions `pos` (T,)."""
        hd = x.size(-1)
        freq = self.theta ** -(torch.arange(0, hd, 2, device=x.device).float() / hd)  # (hd/2,)
        angle = torch.outer(pos.float(), freq).repeat(1, 2)  # (T, hd): each pair's, twice
        return x * angle.cos().to(x.dtype) + rotate_half(x) * angle.sin().to(x.dtype)

    def roll(self, cache: KVCache) -> None:
        """Slide a full cache one position along: drop the oldest key and value and turn
        every remaining key back one position, as if computed one position earlier (q.k
        depends only on distance). Deeper layers' entries still saw the dropped token."""
        cache.drop_oldest(1)
        back = torch.full((cache.k.size(2),), -1, device=cache.k.device)  # (T,)
        cache.k.copy_(self.rotate(cache.k, back))


class MLP(nn.Module):
    """Position-wise feed-forward: widen 4x, GELU, project back."""

    def __init__(self, n_embd: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, 4C) inside


class SwiGLU(nn.Module):
    """The gated MLP of stages 8-9: c_proj(silu(c_gate(x)) * c_fc(x)). Three matrices
    instead of two: `hidden` = round(8 C / 3) keeps a 4C GELU MLP's 8C^2 weights (within C)."""

    def __init__(self, n_embd: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, hidden, bias=False)
        self.c_gate = nn.Linear(n_embd, hidden, bias=False)
        self.c_proj = nn.Linear(hidden, n_embd, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        gated = F.silu(self.c_gate(x)) * self.c_fc(x)  # (B, T, hidden)
        return self.dropout(self.c_proj(gated))


class TransformerBlock(nn.Module):
    """Pre-norm residual block, built from the norms, attention and MLP it is given.

        x ──┬──────────────────────── + ──┬──────────────────── + ──> out
            └─ ln_1 ─ attn (causal) ──┘   └─ ln_2 ─ mlp ────────┘

    The residual stream carries the input straight through, so gradients reach early
    blocks undiminished however deep the stack is.
    """

    def __init__(self, ln_1: nn.Module, attn: MultiHeadAttention, ln_2: nn.Module,
                 mlp: nn.Module):
        super().__init__()
        self.ln_1, self.attn, self.ln_2, self.mlp = ln_1, attn, ln_2, mlp

    def forward(self, x: Tensor, cache: KVCache | None = None, start: int = 0) -> Tensor:
        x = x + self.attn(self.ln_1(x), cache, start)
        return x + self.mlp(self.ln_2(x))


def attention_layers(model: nn.Module) -> list[MultiHeadAttention]:
    return [m for m in model.modules() if isinstance(m, MultiHeadAttention)]


@contextmanager
def explicit_attention(model: nn.Module) -> Iterator[list[MultiHeadAttention]]:
    """Inside, every attention layer of `model` runs the written-out softmax; yields them.

    Hook a layer's `softmax` module to see its attention weights.
    """
    layers = attention_layers(model)
    was = [layer.explicit for layer in layers]
    for layer in layers:
        layer.explicit = True
    try:
        yield layers
    finally:
        for layer, explicit in zip(layers, was, strict=True):
            layer.explicit = explicit


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model.eval()` inside; its training flag as it was afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
