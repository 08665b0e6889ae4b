"""The shape of a model (`ModelConfig`) and its named presets."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, fields
from typing import Any

from stagegpt.errors import StagegptError

GPT2_VOCAB = 50_257
MAX_SIZE = 2**40  # any one size; far beyond memory, still within torch's 64-bit sizes


@dataclass
class ModelConfig:
    """The shape of a stage model. Every stage reads the same config.

    Stages 1-3 ignore `n_layer`, 1-4 `n_head` and `dropout` (3-4 have a single head),
    6-9 `bias` (they have none); the last four fields are read by stages 7-9 only.
    """

    vocab_size: int = GPT2_VOCAB
    block_size: int = 256
    n_embd: int = 256
    n_layer: int = 12
    n_head: int = 4
    dropout: float = 0.0
    bias: bool = True
    n_kv_head: int | None = None  # stage 9's key/value heads (None: see kv_heads)
    rope_theta: float = 10_000.0  # stages 7-9: the base of the rotary frequencies
    mlp_hidden: int | None = None  # stages 8-9's SwiGLU width (None: round(8 * n_embd / 3))
    tie_head: bool = True  # stage 9 may untie its head from wte

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not (
                    1 <= value <= MAX_SIZE):
                raise StagegptError(f"{name} must be a positive integer up to 2**40, "
                                    f"got {value!r:.40}", name)
        if self.n_embd % self.n_head:
            raise StagegptError(
                f"n_head ({self.n_head}) must divide n_embd ({self.n_embd}); pick a head "
                "count that divides the width", "n_head")
        dropout = self.dropout
        if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not (
                0.0 <= dropout < 1.0):  # also refuses nan
            raise StagegptError(f"dropout must be a number in [0, 1), got {dropout!r:.40}",
                                "dropout")
        self.dropout = float(dropout)
        for name in ("bias", "tie_head"):
            if not isinstance(getattr(self, name), bool):
                raise StagegptError(f"{name} must be true or false, got "
                                    f"{getattr(self, name)!r}", name)
        for name in ("n_kv_head", "mlp_hidden"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or not 1 <= value <= MAX_SIZE):
                raise StagegptError(f"{name} must be a positive integer up to 2**40 or "
                                    f"unset, got {value!r:.40}", name)
        if self.n_kv_head is not None and self.n_head % self.n_kv_head:
            raise StagegptError(f"n_head ({self.n_head}) must be a multiple of n_kv_head "
                                f"({self.n_kv_head}): each key/value head serves a group of "
                                "query heads", "n_kv_head")
        theta = self.rope_theta
        if isinstance(theta, bool) or not isinstance(theta, int | float) or not (
                1 < theta <= sys.float_info.max):  # also refuses nan, inf and huge integers
            raise StagegptError(f"rope_theta must be a finite number > 1, got "
                                f"{theta!r:.40}", "rope_theta")
        self.rope_theta = float(theta)

    def kv_heads(self) -> int:
        """Stage 9's key/value heads: n_kv_head, or by default one per two query heads
        (all n_head when that is odd). n_kv_head = n_head is plain multi-head attention."""
        if self.n_kv_head is not None:
            return self.n_kv_head
        return self.n_head // 2 if self.n_head % 2 == 0 else self.n_head

    def swiglu_hidden(self) -> int:
        """Stages 8-9's SwiGLU width: mlp_hidden, or round(8C/3), which gives its three
        matrices the 8C^2 parameters of the 4C GELU MLP's two, give or take C."""
        return self.mlp_hidden or round(8 * self.n_embd / 3)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        if name not in PRESETS:
            raise StagegptError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        cls._refuse_unknown(overrides, "unknown ModelConfig settings", list_known=True)
        return cls(**{**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def _refuse_unknown(cls, settings: dict[str, Any], what: str, list_known: bool = False):
        known = [f.name for f in fields(cls)]
        if unknown := sorted(set(settings) - set(known)):
            choices = f"; choose from {', '.join(known)}" if list_known else ""
            raise StagegptError(f"{what}: {', '.join(unknown)}{choices}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """A saved config (a checkpoint's, a ladder's): its errors name no parameter, as no
        flag set them."""
        if not isinstance(data, dict):
            raise StagegptError(f"a model config must be a table of settings, got {data!r:.60}")
        cls._refuse_unknown(data, "unknown model config keys")
        try:
            return cls(**data)
        except StagegptError as err:
            raise StagegptError(f"model config: {err}") from None


PRESETS: dict[str, dict[str, Any]] = {
    # The seed's final model: GPT-2 tokenizer, 12 blocks, 4 heads.
    "seed": dict(vocab_size=GPT2_VOCAB, block_size=256, n_embd=256, n_layer=12, n_head=4),
    # OpenAI's GPT-2 shapes.
    "gpt2": dict(vocab_size=GPT2_VOCAB, block_size=1024, n_embd=768, n_layer=12, n_head=12),
    "gpt2-medium": dict(vocab_size=GPT2_VOCAB, block_size=1024, n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": dict(vocab_size=GPT2_VOCAB, block_size=1024, n_embd=1280, n_layer=36, n_head=20),
    "gpt2-xl": dict(vocab_size=GPT2_VOCAB, block_size=1024, n_embd=1600, n_layer=48, n_head=25),
    # Small CPU presets; vocab_size is replaced by the data's tokenizer when training.
    "small": dict(vocab_size=GPT2_VOCAB, block_size=64, n_embd=128, n_layer=4, n_head=4),
    "tiny": dict(vocab_size=GPT2_VOCAB, block_size=32, n_embd=64, n_layer=2, n_head=2),
    "micro": dict(vocab_size=GPT2_VOCAB, block_size=16, n_embd=32, n_layer=2, n_head=2),
}
