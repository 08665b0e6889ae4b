"""The five stage models. Each adds one idea to the one before it.

Every stage maps token ids (B, T) to logits (B, T, V) through `body` (ids -> hidden
states) and `lm_head` (hidden states -> logits); the loss, the KV cache and `generate`
live once in `LanguageModel`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stagegpt.errors import StagegptError
from stagegpt.fast.loss import chunked_cross_entropy
from stagegpt.model.config import ModelConfig
from stagegpt.model.layers import KVCache, MultiHeadAttention, TransformerBlock


class LanguageModel(nn.Module):
    """Base class: shared init, loss, KV cache and generation. Subclasses write `body`."""

    stage: int = 0
    idea: str = ""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config

    def body(self, idx: Tensor, caches: list[KVCache] | None = None, start: int = 0) -> Tensor:
        """Token ids (B, T) -> final hidden states (B, T, C)."""
        raise NotImplementedError

    def forward(self, idx: Tensor, targets: Tensor | None = None,
                return_logits: bool = True) -> tuple[Tensor | None, Tensor | None]:
        """Return (logits (B, T, V), mean cross-entropy or None).

        With `return_logits=False` and targets, the loss is computed chunk by chunk
        without ever holding the full (B*T, V) logits, and None is returned for them.
        """
        self._check_length(idx.size(1))
        hidden = self.body(idx)  # (B, T, C)
        if targets is not None and not return_logits:
            loss = chunked_cross_entropy(hidden.flatten(0, 1), self.lm_head.weight,
                                         self.lm_head.bias, targets.flatten())
            return None, loss
        logits = self.lm_head(hidden)  # (B, T, V)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    def decode_one(self, idx: Tensor, caches: list[KVCache] | None, pos: int) -> Tensor:
        """The last hidden state (B, C) after feeding one new token per row, idx (B, 1), at
        position `pos`, the earlier positions' keys and values being in `caches`. The same
        as `body(idx, caches, pos)[:, -1]`; stages with blocks do it with fewer calls."""
        return self.body(idx, caches, pos)[:, -1]

    def loss(self, idx: Tensor, targets: Tensor) -> Tensor:
        """Training loss without materializing the full (B*T, V) logits."""
        return self(idx, targets, return_logits=False)[1]

    def make_kv_cache(self, batch: int, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> list[KVCache] | None:
        """One preallocated cache per attention layer, or None for stages 1-2."""
        layers = [m for m in self.modules() if isinstance(m, MultiHeadAttention)]
        if not layers:
            return None
        c = self.config
        return [KVCache(batch, m.n_head, c.block_size, c.n_embd // m.n_head, device, dtype)
                for m in layers]

    def generate(self, idx: Tensor, max_new_tokens: int, **kwargs) -> Tensor:
        """Continue `idx` (B, T) by up to `max_new_tokens`; see `stagegpt.generate.generate`."""
        from stagegpt.generation.decoding import generate

        return generate(self, idx, max_new_tokens, **kwargs)

    def num_params(self) -> int:
        """Parameter count with the tied head counted once."""
        return sum(p.numel() for p in self.parameters())

    def _check_length(self, T: int) -> None:
        if T > self.config.block_size:
            raise StagegptError(
                f"sequence of {T} tokens is longer than block_size {self.config.block_size}; "
                "crop the input to the model's context window"
            )

    def _positions(self, T: int, start: int, device: torch.device) -> Tensor:
        return torch.arange(start, start + T, device=device)  # (T,)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def _tie_head(self) -> None:
        """The head's weight *is* the token embedding: one tensor, learned from both ends."""
        self.lm_head = nn.Linear(self.config.n_embd, self.config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Make a tied head share the embedding's tensor (again, after `to_empty`)."""
        if self.stage != 1:
            self.lm_head.weight = self.wte.weight


class MinimalLM(LanguageModel):
    """Stage 1: embedding -> GELU -> linear head. Sees only the current token (a bigram model)."""

    stage = 1
    idea = "token embeddings and a linear head (bigram)"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.gelu = nn.GELU(approximate="tanh")
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.bias)
        self.apply(self._init_weights)

    def body(self, idx: Tensor, caches: list[KVCache] | None = None, start: int = 0) -> Tensor:
        return self.gelu(self.wte(idx))  # (B, T, C)


class PositionalLM(LanguageModel):
    """Stage 2: + position embeddings, LayerNorm, and a head tied to the embedding."""

    stage = 2
    idea = "position embeddings, LayerNorm, tied head"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.gelu = nn.GELU(approximate="tanh")
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self._tie_head()
        self.apply(self._init_weights)

    def embed(self, idx: Tensor, start: int = 0) -> Tensor:
        pos = self._positions(idx.size(1), start, idx.device)
        return self.wte(idx) + self.wpe(pos)  # (B, T, C)

    def body(self, idx: Tensor, caches: list[KVCache] | None = None, start: int = 0) -> Tensor:
        return self.ln_f(self.gelu(self.embed(idx, start)))  # (B, T, C)


class AttentionLM(PositionalLM):
    """Stage 3: + one causal attention head, so each position finally sees the past."""

    stage = 3
    idea = "causal single-head self-attention"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = MultiHeadAttention(config.n_embd, n_head=1, bias=config.bias)
        self.attn.apply(self._init_weights)  # each stage initializes only what it adds

    def body(self, idx: Tensor, caches: list[KVCache] | None = None, start: int = 0) -> Tensor:
        x = self.ln_1(self.embed(idx, start))
        x = self.attn(x, caches[0] if caches else None, start)  # (B, T, C)
        return self.ln_f(self.gelu(x))


class BlockLM(PositionalLM):
    """Stage 4: a stack of residual, pre-norm transformer blocks (single-head attention)."""

    stage = 4
    idea = "residual pre-norm transformer blocks, stacked"
    n_head_override: int | None = 1

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        del self.gelu  # the blocks' MLPs hold the nonlinearity now
        n_head = self.n_head_override or config.n_head
        dropout = config.dropout if self.n_head_override is None else 0.0
        self.drop = nn.Dropout(dropout)
        self.h = nn.ModuleList(
            TransformerBlock(config.n_embd, n_head, dropout, config.bias)
            for _ in range(config.n_layer)
        )
        self.h.apply(self._init_weights)

    def body(self, idx: Tensor, caches: list[KVCache] | None = None, start: int = 0) -> Tensor:
        x = self.drop(self.embed(idx, start))  # (B, T, C)
        for i, block in enumerate(self.h):
            x = block(x, caches[i] if caches else None, start)
        return self.ln_f(x)

    def decode_one(self, idx: Tensor, caches: list[KVCache] | None, pos: int) -> Tensor:
        if self.training or caches is None:
            return super().decode_one(idx, caches, pos)
        x = self.embed(idx, pos)[:, 0]  # (B, C); eval mode, so no dropout
        for block, cache in zip(self.h, caches, strict=True):
            x = block.decode_one(x, cache, pos)
        return self.ln_f.forward(x)


class GPT(BlockLM):
    """Stage 5: multi-head attention, dropout and GPT-2's init. This is GPT-2.

    Each residual projection is scaled by 1/sqrt(2 * n_layer) at init, so the residual
    stream's variance stays put as 2 * n_layer branches add into it.
    """

    stage = 5
    idea = "multi-head attention, dropout, GPT-2 init (the full GPT-2)"
    n_head_override = None

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        std = 0.02 / math.sqrt(2 * config.n_layer)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=std)


STAGES: dict[int, type[LanguageModel]] = {
    cls.stage: cls for cls in (MinimalLM, PositionalLM, AttentionLM, BlockLM, GPT)
}


def build_model(stage: int, config: ModelConfig) -> LanguageModel:
    """Build stage 1-5 with `config`."""
    if stage not in STAGES:
        raise StagegptError(f"stage must be one of 1, 2, 3, 4, 5, got {stage!r}")
    return STAGES[stage](config)
