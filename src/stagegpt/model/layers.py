"""The building blocks the stages share: attention, MLP, the transformer block, a KV cache.

Names follow GPT-2 (`c_attn`, `c_proj`, `c_fc`, `ln_1`, `ln_2`) so its weights map one to one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stagegpt.fast import onednn


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

    def update(self, k: Tensor, v: Tensor, start: int) -> tuple[Tensor, Tensor]:
        keys, values, n = self.k, self.v, k.size(2)
        keys.narrow(2, start, n).copy_(k)
        values.narrow(2, start, n).copy_(v)
        return keys.narrow(2, 0, start + n), values.narrow(2, 0, start + n)  # (B, nh, end, hd)


def causal_mask(q_len: int, k_len: int, device: torch.device) -> Tensor:
    """True where query i (the last q_len of k_len positions) may attend to key j."""
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    return torch.arange(k_len, device=device)[None, :] <= q_pos  # (q_len, k_len)


def reference_attention(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Causal attention written out step by step; returns (output, weights).

    q: (B, nh, Tq, hd), k and v: (B, nh, Tk, hd) with Tq <= Tk; the queries are the
    last Tq positions. This is the path the notebooks show and the tests compare against.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, Tq, Tk)
    mask = causal_mask(q.size(-2), k.size(-2), q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights  # (B, nh, Tq, hd), (B, nh, Tq, Tk)


def fast_attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0) -> Tensor:
    """The same causal attention through PyTorch's fused kernel."""
    q_len, k_len = q.size(-2), k.size(-2)
    if q_len == k_len:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    if q_len == 1:  # one new token sees every cached position
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    mask = causal_mask(q_len, k_len, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


class Linear(nn.Linear):
    """`nn.Linear` with the faster fp32 CPU product for the rows at hand.

    Many rows (training, prefill) go through oneDNN (see `stagegpt.onednn`). A few rows
    (decoding) use `decode_weight` while generation has set it (see
    `stagegpt.generate.decoding_weights`): the transposed weight cut into k blocks of
    output columns, (k, in, out / k), so that a batched product gives each thread a block.
    """

    decode_weight: Tensor | None = None
    decode_bias: Tensor | None = None  # the bias as (k, 1, out / k), to go with it
    decode_version: int = -1  # self.weight._version when decode_weight was made

    def set_decode_weight(self, w: Tensor | None) -> None:
        self.decode_weight = w
        self.decode_bias = None
        if w is not None and self.bias is not None:
            self.decode_bias = self.bias.detach().view(w.size(0), 1, -1)
        self.decode_version = self.weight._version

    def _decoding(self, x: Tensor) -> bool:
        """Whether decode_weight serves `x`: few rows, no autograd (inference mode), and
        the weight unchanged since the copy was made (an update bumps its version).

        Runs for every product of every decoded token, so the weight is read through
        `_parameters`, a tenth of the cost of `self.weight`.
        """
        return (self.decode_weight is not None and torch.is_inference_mode_enabled()
                and self._parameters["weight"]._version == self.decode_version
                and x.numel() < onednn.MIN_ROWS * x.size(-1))

    def forward(self, x: Tensor) -> Tensor:
        if self._decoding(x):
            return self._decode_product(x)
        return onednn.linear(x, self.weight, self.bias)

    def _decode_product(self, x: Tensor) -> Tensor:
        w = self.decode_weight  # (k, in, out / k)
        rows = x if x.dim() == 2 else x.reshape(-1, x.size(-1))  # (rows, in)
        xs = rows.expand(w.size(0), -1, -1)  # (k, rows, in): the same rows for each block
        if self.decode_bias is None:
            y = torch.bmm(xs, w)  # (k, rows, out / k)
        else:
            y = torch.baddbmm(self.decode_bias, xs, w)
        return y.transpose(0, 1).reshape(*x.shape[:-1], self.out_features)


class MultiHeadAttention(nn.Module):
    """Causal self-attention with `n_head` heads; `n_head=1` is stages 3-4's single head.

    Set `reference = True` to run the explicit softmax path, and `keep_weights = True`
    as well to keep the last attention weights in `self.weights` for plotting.
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.n_head = n_head
        self.c_attn = Linear(n_embd, 3 * n_embd, bias=bias)  # q, k, v in one matmul
        self.c_proj = Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.dropout = dropout
        self.reference = False
        self.keep_weights = False
        self.weights: Tensor | None = None

    def forward(self, x: Tensor, cache: KVCache | None = None, start: int = 0) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hd)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hd)
        if cache is not None:
            k, v = cache.update(k, v, start)  # (B, nh, start + T, hd)
        y = self._attend(q, k, v)  # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C): heads side by side again
        return self.resid_dropout(self.c_proj(y))

    def decode_one(self, x: Tensor, cache: KVCache, pos: int) -> Tensor:
        """`forward` in eval mode for one new token per row, x (B, C) at position `pos`,
        with its keys and values cached: the same products, fewer calls per token."""
        B, C = x.shape
        qkv = self.c_attn.forward(x).view(B, 3, self.n_head, 1, C // self.n_head)
        q, k, v = qkv.unbind(1)  # 3 x (B, nh, 1, hd)
        k, v = cache.update(k, v, pos)  # (B, nh, pos + 1, hd)
        y = self._attend(q, k, v)  # (B, nh, 1, hd)
        return self.c_proj.forward(y.view(B, C))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self.reference or self.keep_weights:
            y, weights = reference_attention(q, k, v)
            self.weights = weights.detach() if self.keep_weights else None
            return y
        return fast_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)


class MLP(nn.Module):
    """Position-wise feed-forward: widen 4x, GELU, project back."""

    def __init__(self, n_embd: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.c_fc = Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, 4C) inside

    def decode_one(self, x: Tensor) -> Tensor:
        """`forward` in eval mode for one decoding step's rows x (B, C)."""
        return self.c_proj.forward(self.gelu.forward(self.c_fc.forward(x)))


class TransformerBlock(nn.Module):
    """Pre-norm residual block.

        x ──┬──────────────────────── + ──┬──────────────────── + ──> out
            └─ ln_1 ─ attn (causal) ──┘   └─ ln_2 ─ mlp ────────┘

    The residual stream carries the input straight through, so gradients reach early
    blocks undiminished however deep the stack is.
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = MultiHeadAttention(n_embd, n_head, dropout, bias)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, dropout, bias)

    def forward(self, x: Tensor, cache: KVCache | None = None, start: int = 0) -> Tensor:
        x = x + self.attn(self.ln_1(x), cache, start)
        return x + self.mlp(self.ln_2(x))

    def decode_one(self, x: Tensor, cache: KVCache, pos: int) -> Tensor:
        """`forward` in eval mode for one new token per row, x (B, C) at position `pos`.

        The same computation through `decode_one` and `forward()` calls instead of module
        calls: decoding a token runs every layer for a few rows, where the cost of each
        call, not the arithmetic, sets the pace of the small products.
        """
        x = x + self.attn.decode_one(self.ln_1.forward(x), cache, pos)
        return x + self.mlp.decode_one(self.ln_2.forward(x))


def attention_layers(model: nn.Module) -> list[MultiHeadAttention]:
    return [m for m in model.modules() if isinstance(m, MultiHeadAttention)]


def use_reference_attention(model: nn.Module, enabled: bool = True) -> None:
    """Switch every attention layer of `model` to the explicit (or the fused) path."""
    for layer in attention_layers(model):
        layer.reference = enabled
