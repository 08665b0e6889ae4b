"""Small things several test modules build (tests/ is on sys.path through conftest.py)."""

import torch

from stagegpt import build_model


def peaky_model(stage, config, seed=0):
    """A random model with large weights: sharp, varied greedy choices instead of one token
    repeated, so a wrong position, a stale cache entry or a changed product shows."""
    torch.manual_seed(seed)
    model = build_model(stage, config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 1.0)
    return model.eval()
