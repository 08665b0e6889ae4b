"""A model's mean loss over a whole split, not over a sample of batches.

The validation curve during training uses a fixed sample of batches (quick, and the same
every time). Comparing finished models needs the whole split: the split is cut into
consecutive `block_size` windows and every window's tokens are scored, once each.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from stagegpt.data.datasets import TokenWindows
from stagegpt.fast import accelerate
from stagegpt.model import LanguageModel
from stagegpt.model.layers import eval_mode


@torch.no_grad()
def split_loss(model: LanguageModel, tokens: np.ndarray, batch_size: int = 32,
               fast: bool = True) -> float:
    """Mean next-token cross-entropy of `model` over every full window of `tokens`.

    fast: compute each batch's loss without its full logits (`stagegpt.fast`).
    """
    windows = TokenWindows(tokens, model.config.block_size)
    loader = torch.utils.data.DataLoader(windows, batch_size=batch_size)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with eval_mode(model), (accelerate(model) if fast else nullcontext(model)) as scorer:
        for x, y in loader:  # (B, T) each
            loss = scorer.loss(x.to(device), y.to(device))
            total += loss.item() * y.numel()
            count += y.numel()
    return total / count
