"""A model's mean loss over a whole split, not over a sample of batches.

The validation curve during training uses a fixed sample of batches (quick, and the same
every time). Comparing finished models needs the whole split: the split is cut into
consecutive `block_size` windows and every window's tokens are scored, once each.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from stagegpt.data.datasets import TokenWindows, check_ids_fit
from stagegpt.errors import StagegptError
from stagegpt.fast import accelerate
from stagegpt.model import LanguageModel
from stagegpt.model.layers import eval_mode
from stagegpt.values import is_int

# Tables score the whole val split up to this many tokens (in windows spread evenly over a
# larger split), so that scoring stays a bounded share of a ladder's time.
SCORE_TOKENS = 1 << 17
MAX_BATCH = 4096


def check_split_args(model: LanguageModel, tokens: np.ndarray, batch_size: int,
                     max_tokens: int | None, check_ids: bool = True) -> None:
    if not isinstance(tokens, np.ndarray) or tokens.ndim != 1 or tokens.dtype.kind not in "iu":
        raise StagegptError("tokens must be a 1-D numpy array of token ids (a split, as "
                            "load_split returns)", "tokens")
    if check_ids:  # a pass over the whole split
        check_ids_fit(tokens, model.config.vocab_size, "tokens", "tokens")
    if not is_int(batch_size) or not 1 <= batch_size <= MAX_BATCH:
        raise StagegptError(f"batch_size must be an integer from 1 to {MAX_BATCH:,}, got "
                            f"{batch_size!r:.40}", "batch_size")
    if max_tokens is not None and (not is_int(max_tokens) or max_tokens < 1):
        raise StagegptError(f"max_tokens must be a positive integer or None, got "
                            f"{max_tokens!r:.40}", "max_tokens")


@torch.no_grad()
def split_loss(model: LanguageModel, tokens: np.ndarray, batch_size: int = 32,
               fast: bool = True, max_tokens: int | None = None,
               check_ids: bool = True) -> float:
    """Mean next-token cross-entropy of `model` over every full window of `tokens`.

    max_tokens: score at most about this many tokens, in windows spread evenly over the
    split (a bound on the cost for large splits); None scores every window.
    fast: compute each batch's loss without its full logits (`stagegpt.fast`).
    check_ids: False if the caller has checked every id of `tokens` against the model's
    vocabulary already (a Trainer's splits), to spare a second pass over the split.
    """
    check_split_args(model, tokens, batch_size, max_tokens, check_ids)
    windows = TokenWindows(tokens, model.config.block_size)
    count = len(windows)
    if max_tokens is not None and count * model.config.block_size > max_tokens:
        count = max(1, max_tokens // model.config.block_size)
        picked = torch.linspace(0, len(windows) - 1, count).round().long().tolist()
        windows = torch.utils.data.Subset(windows, picked)
    loader = torch.utils.data.DataLoader(windows, batch_size=batch_size)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with eval_mode(model), (accelerate(model) if fast else nullcontext(model)) as scorer:
        for x, y in loader:  # (B, T) each
            loss = scorer.loss(x.to(device), y.to(device))
            total += loss.item() * y.numel()
            count += y.numel()
    return total / count
