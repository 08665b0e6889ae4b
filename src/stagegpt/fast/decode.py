"""Faster decoding steps on a CPU: the same logits as the plain model, sooner.

At one new token per row every product is a matrix-vector product, bound by reading the
weights, and every module call costs as much as the arithmetic of a small model. On AMD
CPUs MKL (PyTorch's default) runs such a product on one thread and reads the (out, in)
`nn.Linear` layout slowly, but its batched product gives each thread one matrix of the
batch. So there (`copies_pay()`) a `FastDecoder` (for generations long enough to repay
a copy, about what 20 tokens save) keeps

- each layer's weight transposed and cut into one block of output columns per thread,
  (k, in, out / k), within DECODE_COPY_BYTES in all (`ColumnBlocks`), transposed
  TRANSPOSE_ROWS rows at a time (PyTorch's transposing copy of a whole 25 MB block is
  slow: a `seed` decoder's copies took 127 ms so, 106 ms in pieces);
- the head, the largest matrix, the same way (it reads at ~40 GB/s so: 1.3 ms per token
  against 2.1 as one transposed copy and 2.4 through oneDNN on an EPYC Zen 3; in a
  whole decode, 146 against 125 tokens/s), or, on the AMD CPUs where oneDNN's products
  are preferred (`onednn.preferred()`), through oneDNN, which shares a matrix-vector
  product among threads by itself;

measured at the seed shape on a 2-core EPYC (Zen 3): 130 tokens/s with the block copies
and the head's transposed copy, 80 without. Where MKL is fast itself (Intel) the copies
cost more than they save (measured on a 2-core Xeon: 275 tokens/s with them, 298 without
the head's, 288 without the blocks'), so none are made. Everywhere a `FastDecoder` runs
a cached step of a stage 4-5 model as one function (`lean_step`): the blocks' products
and norms called directly, q/k/v split by one view, no module calls. The copies belong
to the decoder and go with it; a weight changed after they were made (its version moved)
sends the decoder back to the plain path. Module hooks fire only on the plain
path, so a model with hooks, or attention set to `explicit`, always decodes plainly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stagegpt.fast import cpu, onednn
from stagegpt.model.layers import MLP, KVCache, MultiHeadAttention, TransformerBlock
from stagegpt.model.stages import LanguageModel

DECODE_COPY_BYTES = 256 << 20  # at most this much in weight copies per decoder
MIN_STEPS = 32  # fewer steps than this do not repay the copies
COPIES: bool | None = None  # None: by CPU (`copies_pay`); True/False force it (tests)
TRANSPOSE_ROWS = 1024  # rows of a weight transposed per copy (see the module docstring)


def copies_pay() -> bool:
    """Weight copies speed decoding up where MKL's matrix-vector products are slow."""
    return cpu.amd_x86() if COPIES is None else COPIES


class ColumnBlocks:
    """`F.linear(x, weight, bias)` for a few rows x (B, in), as a batched product over
    k blocks of output columns: one block per thread. Where k does not divide the
    output width, the last block ends in zero columns, cut off the result."""

    def __init__(self, layer: nn.Linear, k: int):
        out, weight = layer.out_features, layer.weight.detach()  # (out, in)
        width = -(-out // k)  # columns per block, rounded up
        pad = width * k - out
        self.weight = weight.new_empty(k, layer.in_features, width)  # (k, in, width)
        for i, block in enumerate(self.weight):
            rows = weight[i * width:(i + 1) * width]  # (<= width, in); none past `out`
            for start in range(0, rows.size(0), TRANSPOSE_ROWS):
                piece = rows[start:start + TRANSPOSE_ROWS]
                block[:, start:start + piece.size(0)] = piece.t()
            block[:, rows.size(0):] = 0  # the padding columns
        bias = layer.bias
        self.bias = None if bias is None else F.pad(bias.detach(), (0, pad)).view(k, 1, width)
        self.out = out

    def __call__(self, x: Tensor) -> Tensor:
        k, _, width = self.weight.shape
        xs = x.expand(k, -1, -1)  # (k, B, in): the same rows for each block
        if self.bias is None:
            y = torch.bmm(xs, self.weight)  # (k, B, width)
        else:
            y = torch.baddbmm(self.bias, xs, self.weight)
        if x.size(0) == 1:  # one row: its blocks already lie side by side
            y = y.view(1, k * width)
        else:
            y = y.transpose(0, 1).reshape(x.size(0), k * width)  # (B, k * width)
        return y if k * width == self.out else y[:, :self.out]  # (B, out)


def has_plain_blocks(model: LanguageModel) -> bool:
    """Whether `lean_step` computes exactly what `model.body` does: GPT-2 blocks (LayerNorm,
    fused attention, GELU MLP) between learned embeddings and a final LayerNorm, no hooks."""
    blocks = getattr(model, "h", None)
    if not isinstance(blocks, nn.ModuleList) or not isinstance(getattr(model, "ln_f", None),
                                                                  nn.LayerNorm):
        return False
    for block in blocks:
        if not (type(block) is TransformerBlock and type(block.attn) is MultiHeadAttention
                and type(block.mlp) is MLP and not block.attn.explicit
                and block.attn.n_kv_head == block.attn.n_head
                and all(type(n) is nn.LayerNorm for n in (block.ln_1, block.ln_2))):
            return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


class FastDecoder:
    """Prefill, cached steps and the head for up to `steps` decoding steps of `model`,
    which stays in eval mode and unchanged meanwhile (else: the plain path)."""

    def __init__(self, model: LanguageModel, steps: int):
        self.model = model
        self.lean = has_plain_blocks(model)
        self.products: dict[nn.Module, ColumnBlocks] = {}
        self.head_mode = "plain"  # or "onednn", or "blocks" (head_blocks)
        self.head_blocks: ColumnBlocks | None = None
        self.versions: list[tuple[Tensor, int]] = []
        if self.applies(model, steps):
            self._copy_weights()

    @staticmethod
    def applies(model: LanguageModel, steps: int) -> bool:
        """Whether copies pay: fp32 weights on a CPU where MKL's matrix-vector products
        are slow, no autocast, enough steps."""
        weight = model.lm_head.weight
        return (weight.device.type == "cpu" and weight.dtype == torch.float32
                and copies_pay()
                and not torch.is_autocast_enabled("cpu") and steps >= MIN_STEPS)

    def _copy_weights(self) -> None:
        budget = DECODE_COPY_BYTES
        threads = torch.get_num_threads()
        head = self.model.lm_head
        self._watch(head.weight)
        if threads > 1 and onednn.preferred():
            self.head_mode = "onednn"
        else:
            budget -= head.weight.numel() * head.weight.element_size()
            if budget < 0:
                return
            self.head_mode, self.head_blocks = "blocks", ColumnBlocks(head, threads)
        for layer in self.model.modules():
            if isinstance(layer, nn.Linear) and layer is not head:
                budget -= layer.weight.numel() * layer.weight.element_size()
                if budget < 0:
                    break
                self.products[layer] = ColumnBlocks(layer, threads)
                self._watch(layer.weight)

    def _watch(self, weight: Tensor) -> None:
        self.versions.append((weight, weight._version))

    def _check_copies(self) -> None:
        """Forget every copy if a weight changed since it was made (say, an optimizer step
        while a stream was paused) or autocast is on (the copies are fp32 products): the
        plain products are right whatever happens. Runs before each token's products."""
        if torch.is_autocast_enabled("cpu") or any(w._version != v for w, v in self.versions):
            self.products, self.versions = {}, []
            self.head_mode, self.head_blocks = "plain", None

    # ---- the three operations decoding needs ------------------------------------------

    def prefill(self, window: Tensor, caches: list[KVCache] | None) -> Tensor:
        """The last hidden state (B, C) of `window` (B, T) at positions 0..T-1."""
        self._check_copies()
        return self.model.body(window, caches, 0)[:, -1]

    def step(self, ids: Tensor, caches: list[KVCache] | None, pos: int) -> Tensor:
        """The hidden state (B, C) of one new token per row, ids (B, 1), at `pos`."""
        self._check_copies()
        if not self.lean or caches is None:
            return self.model.body(ids, caches, pos)[:, -1]
        return self.lean_step(ids, caches, pos)

    def head(self, hidden: Tensor) -> Tensor:
        """Logits (B, V) of hidden states (B, C)."""
        head = self.model.lm_head
        if self.head_mode == "onednn":
            return onednn.matmul_nt(hidden, head.weight.detach(), head.bias)
        if self.head_blocks is not None:
            return self.head_blocks(hidden)  # (B, V)
        return F.linear(hidden, head.weight, head.bias)

    # ---- the lean step ------------------------------------------------------------------

    def lean_step(self, ids: Tensor, caches: list[KVCache], pos: int) -> Tensor:
        """`model.body(ids, caches, pos)[:, -1]` of a stage 4-5 model in eval mode, with
        direct calls (`forward()`, no module call machinery)."""
        x = self.model.embed(ids, pos)[:, 0]  # (B, C)
        for block, cache in zip(self.model.h, caches, strict=True):
            x = x + self._attention(block.attn, block.ln_1.forward(x), cache, pos)
            x = x + self._mlp(block.mlp, block.ln_2.forward(x))
        return self.model.ln_f.forward(x)

    def _linear(self, layer: nn.Linear, x: Tensor) -> Tensor:
        product = self.products.get(layer)
        return F.linear(x, layer.weight, layer.bias) if product is None else product(x)

    def _attention(self, attn: MultiHeadAttention, x: Tensor, cache: KVCache, pos: int) -> Tensor:
        B, C = x.shape
        qkv = self._linear(attn.c_attn, x).view(B, 3, attn.n_head, 1, C // attn.n_head)
        q, k, v = qkv.unbind(1)  # 3 x (B, nh, 1, hd)
        k, v = cache.update(k, v, pos)  # (B, nh, pos + 1, hd)
        y = F.scaled_dot_product_attention(q, k, v)  # the one query sees every cached key
        return self._linear(attn.c_proj, y.view(B, C))

    def _mlp(self, mlp: MLP, x: Tensor) -> Tensor:
        return self._linear(mlp.c_proj, mlp.gelu.forward(self._linear(mlp.c_fc, x)))
