import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

from stagegpt import ModelConfig  # noqa: E402


@pytest.fixture
def tiny_config() -> ModelConfig:
    """A model small enough for any test: 2 blocks, 2 heads, width 32, context 16."""
    return ModelConfig(vocab_size=97, block_size=16, n_embd=32, n_layer=2, n_head=2)
