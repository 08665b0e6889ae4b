"""A model's mean loss over a whole split, not over a sample of batches.

The validation curve during training uses a fixed sample of batches (quick, and the same
every time). Comparing finished models needs the whole split: the split is cut into
consecutive `block_size` windows and every window's tokens are scored, once each.
"""

from __future__ import annotations

import numpy as np
import torch

from stagegpt.data.datasets import TokenWindows
from stagegpt.model.stages import LanguageModel


@torch.no_grad()
def split_loss(model: LanguageModel, tokens: np.ndarray, batch_size: int = 32) -> float:
    """Mean next-token cross-entropy of `model` over every full window of `tokens`."""
    windows = TokenWindows(tokens, model.config.block_size)
    loader = torch.utils.data.DataLoader(windows, batch_size=batch_size)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for x, y in loader:  # (B, T) each
            _, loss = model(x.to(device), y.to(device), return_logits=False)
            total += loss.item() * y.numel()
            count += y.numel()
    finally:
        model.train(was_training)
    return total / count
