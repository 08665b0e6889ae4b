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


def last_step_both_ways(decoder, model, prompt):
    """The hidden states (fast, plain) of `prompt`'s last token, each after a prefill of the
    tokens before it: `decoder` against `model`'s own plain decoding path."""
    from stagegpt.generation.decoding import PlainDecoder

    T = prompt.size(1)
    states = []
    with torch.inference_mode():
        for steps in (decoder, PlainDecoder(model)):
            caches = model.make_kv_cache(prompt.size(0))
            steps.prefill(prompt[:, :T - 1], caches)
            states.append(steps.step(prompt[:, T - 1:], caches, T - 1))
    return tuple(states)
