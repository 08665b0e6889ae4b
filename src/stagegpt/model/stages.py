"""The stage models. Each adds one idea to the one before it.

Every stage maps token ids (B, T) to logits (B, T, V) through `body` (ids -> hidden
states) and `lm_head` (hidden states -> logits); the loss lives once, in `LanguageModel`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stagegpt.errors import StagegptError
from stagegpt.model.config import ModelConfig
from stagegpt.model.layers import (
    MLP,
    KVCache,
    MultiHeadAttention,
    RotaryAttention,
    SwiGLU,
    TransformerBlock,
    eval_mode,
)

Caches = list[KVCache] | None  # one per attention layer while decoding


class LanguageModel(nn.Module):
    """Base class: the loss, the KV cache, init and weight tying. Subclasses write `body`."""

    stage: int = 0
    idea: str = ""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config

    def body(self, idx: Tensor, caches: Caches = None, start: int = 0) -> Tensor:
        """Token ids (B, T) at positions start..start+T-1 -> final hidden states (B, T, C)."""
        raise NotImplementedError

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Return logits (B, T, V) and, given targets (B, T), the mean cross-entropy."""
        self.check_length(idx)
        logits = self.lm_head(self.body(idx))  # (B, T, V)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    def loss(self, idx: Tensor, targets: Tensor) -> Tensor:
        return self(idx, targets)[1]

    def check_length(self, idx: Tensor) -> None:
        if idx.size(1) > self.config.block_size:
            raise StagegptError(
                f"sequence of {idx.size(1)} tokens is longer than block_size "
                f"{self.config.block_size}; crop the input to the model's context window"
            )

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, seed: int | None = None) -> Tensor:
        """Continue `idx` (B, T) token by token, the window rolling forward past block_size.

        The loop at its plainest: the whole window runs through the model for every token
        (no KV cache). `stagegpt.generate` is the full sampler: a KV cache, top-p, stop
        ids, streaming, and the same greedy tokens as this loop.
        """
        generator = None if seed is None else torch.Generator(idx.device).manual_seed(seed)
        with eval_mode(self):  # no dropout while sampling
            for _ in range(max_new_tokens):
                idx = torch.cat([idx, self.next_token(idx, temperature, top_k, generator)], 1)
        return idx  # (B, T + max_new_tokens)

    def next_token(self, idx: Tensor, temperature: float, top_k: int | None,
                   generator: torch.Generator | None) -> Tensor:
        """One step of `generate`: the next id of each row (B, 1)."""
        logits, _ = self(idx[:, -self.config.block_size:])  # (B, T, V): the window
        logits = logits[:, -1].float()  # (B, V): only the last position predicts
        if temperature == 0:
            return logits.argmax(dim=-1, keepdim=True)  # greedy
        ids = None
        if top_k is not None:  # exactly k candidates, even when logits tie
            logits, ids = torch.topk(logits, min(top_k, logits.size(-1)))  # (B, k)
        probs = torch.softmax(logits / temperature, dim=-1)
        choice = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
        return choice if ids is None else ids.gather(-1, choice)

    def make_kv_cache(self, batch: int, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> Caches:
        """One preallocated cache per attention layer, or None for stages without attention."""
        layers = [m for m in self.modules() if isinstance(m, MultiHeadAttention)]
        c = self.config
        return [KVCache(batch, m.n_kv_head, c.block_size, c.n_embd // m.n_head, device, dtype)
                for m in layers] or None

    def roll_cache(self, caches: Caches) -> bool:
        """Make room for one more token in full caches, if positions allow it: learned
        positions are absolute, so here they do not (the window is run again instead)."""
        return False

    def num_params(self) -> int:
        """Parameter count with the tied head counted once."""
        return sum(p.numel() for p in self.parameters())

    def embed(self, idx: Tensor, start: int = 0) -> Tensor:
        """Token plus learned position embeddings (B, T, C), for stages 2-6."""
        pos = torch.arange(start, start + idx.size(1), device=idx.device)  # (T,)
        return self.wte(idx) + self.wpe(pos)  # (B, T, C)

    def tie_weights(self) -> None:
        """The head's weight *is* the token embedding: one tensor, learned from both ends."""
        self.lm_head.weight = self.wte.weight

    def init_weights(self, *parts: nn.Module) -> None:
        """GPT-2's init of `parts` (default: the whole model): weights N(0, 0.02), biases 0."""
        for part in parts or (self,):
            for module in part.modules():
                if isinstance(module, nn.Linear | nn.Embedding):
                    nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)


class MinimalLM(LanguageModel):
    """Stage 1: embedding -> GELU -> linear head. Sees only the current token (a bigram model)."""

    stage = 1
    idea = "token embeddings and a linear head (bigram)"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.gelu = nn.GELU(approximate="tanh")
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.bias)
        self.init_weights()

    def body(self, idx: Tensor, caches: Caches = None, start: int = 0) -> Tensor:
        return self.gelu(self.wte(idx))  # (B, T, C)

    def tie_weights(self) -> None:
        """Stage 1's head has a weight of its own."""


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
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.tie_weights()
        self.init_weights()

    def body(self, idx: Tensor, caches: Caches = None, start: int = 0) -> Tensor:
        return self.ln_f(self.gelu(self.embed(idx, start)))  # (B, T, C)


class AttentionLM(PositionalLM):
    """Stage 3: + one causal attention head, so each position finally sees the past."""

    stage = 3
    idea = "causal single-head self-attention"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = MultiHeadAttention(config.n_embd, n_head=1, bias=config.bias)
        self.init_weights(self.ln_1, self.attn)  # stage 2's part is initialized already

    def body(self, idx: Tensor, caches: Caches = None, start: int = 0) -> Tensor:
        x = self.ln_1(self.embed(idx, start))  # (B, T, C)
        x = self.attn(x, caches[0] if caches else None, start)  # (B, T, C)
        return self.ln_f(self.gelu(x))


class BlockLM(LanguageModel):
    """Stage 4: stage 3's embeddings, norm and tied head around a stack of residual,
    pre-norm transformer blocks (single-head attention); the MLPs hold the nonlinearity.

    Each later stage swaps one of the parts these methods build: `norm`, `attention`,
    `mlp`, `position_embedding`.
    """

    stage = 4
    idea = "residual pre-norm transformer blocks, stacked"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = self.position_embedding()
        self.h = nn.ModuleList(self.block() for _ in range(config.n_layer))
        self.ln_f = self.norm()
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.tie_weights()
        self.init_weights()

    def position_embedding(self) -> nn.Embedding | None:
        return nn.Embedding(self.config.block_size, self.config.n_embd)

    def norm(self) -> nn.Module:
        return nn.LayerNorm(self.config.n_embd, bias=self.config.bias)

    def attention(self) -> MultiHeadAttention:
        return MultiHeadAttention(self.config.n_embd, n_head=1, bias=self.config.bias)

    def mlp(self) -> nn.Module:
        return MLP(self.config.n_embd, bias=self.config.bias)

    def block(self) -> TransformerBlock:
        return TransformerBlock(self.norm(), self.attention(), self.norm(), self.mlp())

    def body(self, idx: Tensor, caches: Caches = None, start: int = 0) -> Tensor:
        x = self.embed(idx, start)  # (B, T, C)
        for i, block in enumerate(self.h):
            x = block(x, caches[i] if caches else None, start)
        return self.ln_f(x)


class GPT(BlockLM):
    """Stage 5: stage 4 with multi-head attention, dropout and GPT-2's init. This is GPT-2.

    Each residual projection starts scaled by 1/sqrt(2 * n_layer), so the 2 * n_layer
    branches together add about one unscaled branch's variance to the residual stream.
    """

    stage = 5
    idea = "multi-head attention, dropout, GPT-2 init (the full GPT-2)"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.drop = nn.Dropout(config.dropout)

    def attention(self) -> MultiHeadAttention:
        c = self.config
        return MultiHeadAttention(c.n_embd, c.n_head, c.dropout, c.bias)

    def mlp(self) -> nn.Module:
        return MLP(self.config.n_embd, self.config.dropout, self.config.bias)

    def embed(self, idx: Tensor, start: int = 0) -> Tensor:
        return self.drop(super().embed(idx, start))  # (B, T, C)

    def init_weights(self, *parts: nn.Module) -> None:
        super().init_weights(*parts)
        std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=std)


# ---- beyond GPT-2: stages 6-9 climb to a Llama-style decoder, one idea at a time -------

RMS_EPS = 1e-5


class RMSNormLM(GPT):
    """Stage 6: RMSNorm (scale by the root mean square; no mean, no shift) and no biases."""

    stage = 6
    idea = "RMSNorm, no biases"

    def norm(self) -> nn.Module:
        return nn.RMSNorm(self.config.n_embd, eps=RMS_EPS)

    def attention(self) -> MultiHeadAttention:
        c = self.config
        return MultiHeadAttention(c.n_embd, c.n_head, c.dropout, bias=False)

    def mlp(self) -> nn.Module:
        return MLP(self.config.n_embd, self.config.dropout, bias=False)


class RotaryLM(RMSNormLM):
    """Stage 7: rotary position embeddings in attention instead of learned `wpe`: positions
    become relative."""

    stage = 7
    idea = "rotary position embeddings (relative positions)"

    def position_embedding(self) -> None:
        return None  # positions enter attention (RotaryAttention.place)

    def attention(self) -> MultiHeadAttention:
        c = self.config
        return RotaryAttention(c.n_embd, c.n_head, c.dropout, bias=False, theta=c.rope_theta)

    def embed(self, idx: Tensor, start: int = 0) -> Tensor:
        return self.drop(self.wte(idx))  # (B, T, C): no position added here

    def roll_cache(self, caches: Caches) -> bool:
        """Relative positions: a full cache slides along (RotaryAttention.roll)."""
        for block, cache in zip(self.h, caches or [], strict=True):
            block.attn.roll(cache)
        return caches is not None


class SwiGLULM(RotaryLM):
    """Stage 8: a gated (SwiGLU) MLP with the parameters of the GELU one."""

    stage = 8
    idea = "SwiGLU MLP (parameter-matched)"

    def mlp(self) -> nn.Module:
        c = self.config
        return SwiGLU(c.n_embd, c.swiglu_hidden(), c.dropout)


class Llama(SwiGLULM):
    """Stage 9: grouped-query attention (`config.kv_heads()` key/value heads: by default
    each serves two query heads), and optionally a head of its own (`tie_head=False`).
    This is the Llama architecture."""

    stage = 9
    idea = "grouped-query attention (the Llama architecture)"

    def attention(self) -> MultiHeadAttention:
        c = self.config
        return RotaryAttention(c.n_embd, c.n_head, c.dropout, bias=False,
                               n_kv_head=c.kv_heads(), theta=c.rope_theta)

    def tie_weights(self) -> None:
        if self.config.tie_head:
            super().tie_weights()


STAGES: dict[int, type[LanguageModel]] = {
    cls.stage: cls for cls in (MinimalLM, PositionalLM, AttentionLM, BlockLM, GPT, RMSNormLM,
                               RotaryLM, SwiGLULM, Llama)
}


def build_model(stage: int, config: ModelConfig) -> LanguageModel:
    """Build stage 1-9 with `config`."""
    if not isinstance(config, ModelConfig):
        raise StagegptError(f"config must be a ModelConfig, got {type(config).__name__}; "
                            "build one with ModelConfig(...) or ModelConfig.from_preset(name)")
    if not isinstance(stage, int) or isinstance(stage, bool) or stage not in STAGES:
        raise StagegptError(f"stage must be one of {', '.join(map(str, STAGES))}, got {stage!r}")
    return STAGES[stage](config)
