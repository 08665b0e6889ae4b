"""The plain model: the code a learner reads. PyTorch only; nothing here exists for speed.

    config.py   ModelConfig and the named presets
    layers.py   attention, MLP, the transformer block, the KV cache
    stages.py   LanguageModel and the stages, each adding one idea to the one before
"""

from stagegpt.model.config import GPT2_VOCAB, PRESETS, ModelConfig
from stagegpt.model.layers import MLP, KVCache, MultiHeadAttention, TransformerBlock
from stagegpt.model.stages import (
    GPT,
    STAGES,
    AttentionLM,
    BlockLM,
    LanguageModel,
    MinimalLM,
    PositionalLM,
    build_model,
)

__all__ = [
    "GPT", "GPT2_VOCAB", "MLP", "PRESETS", "STAGES", "AttentionLM", "BlockLM", "KVCache",
    "LanguageModel", "MinimalLM", "ModelConfig", "MultiHeadAttention", "PositionalLM",
    "TransformerBlock", "build_model",
]
