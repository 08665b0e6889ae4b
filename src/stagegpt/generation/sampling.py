"""Picking the next token from logits: temperature, top-k, top-p, and a seeded draw."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from stagegpt.errors import StagegptError
from stagegpt.values import is_int, is_real

MAX_NEW_TOKENS = 1 << 24  # ids of one row alone would take 128 MB; far past any use


def check_sampling_args(max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                        top_p: float | None = None, seed: int | None = None) -> None:
    """Raise StagegptError, naming the parameter, on a value sampling cannot use."""
    if not is_int(max_new_tokens) or not 0 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise StagegptError(f"max_new_tokens must be an integer from 0 to {MAX_NEW_TOKENS:,}, "
                            f"got {max_new_tokens!r:.40}", "max_new_tokens")
    if not is_real(temperature) or not math.isfinite(temperature) or temperature < 0:
        raise StagegptError(f"temperature must be a finite number >= 0 (0 means greedy), got "
                            f"{temperature!r:.40}", "temperature")
    if top_k is not None and (not is_int(top_k) or top_k < 1):
        raise StagegptError(f"top_k must be an integer >= 1, got {top_k!r:.40}", "top_k")
    if top_p is not None and (not is_real(top_p) or not 0.0 < top_p <= 1.0):
        raise StagegptError(f"top_p must be in (0, 1], got {top_p!r:.40}", "top_p")
    if seed is not None and (not is_int(seed) or not 0 <= seed < 2**64):
        raise StagegptError(f"seed must be an integer in [0, 2**64), got {seed!r:.40}", "seed")


def nth_seed(seed: int | None, i: int) -> int | None:
    """The seed of the i-th of several samples seeded with `seed`: seed + i, wrapping
    around at 2**64 so that every seed check_sampling_args accepts works for any i."""
    return None if seed is None else (seed + i) % 2**64


def top_p_keep(sorted_probs: Tensor, top_p: float) -> Tensor:
    """Which tokens of a descending (B, V) distribution the nucleus keeps, as a bool (B, V).

    The nucleus is the smallest prefix whose mass reaches `top_p`: a token stays while the
    mass before it is still below `top_p`, so the most likely token always stays.
    """
    mass_before = sorted_probs.cumsum(dim=-1)  # (B, V), shifted right by one below
    keep = torch.ones_like(sorted_probs, dtype=torch.bool)
    keep[..., 1:] = mass_before[..., :-1] < top_p
    return keep


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Pick the next token of each row: logits (B, V) -> ids (B, 1).

    Temperature 0 is greedy (argmax). Otherwise top-k and top-p work on the few candidates
    they keep instead of masking all V logits: `topk` keeps exactly k tokens even when
    logits tie, and top-p (after top-k, when both are given) trims the candidates further.
    """
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
    weights, ids = _candidates(logits, temperature, top_k, top_p)
    choice = draw(weights, generator)  # (B, 1)
    return choice if ids is None else ids.gather(-1, choice)


def sampling_probs(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None) -> Tensor:
    """The distribution `sample_next` draws from, over the whole vocabulary: (B, V) -> (B, V).

    Each row sums to 1 and is zero outside the tokens top-k and top-p keep; temperature 0
    (greedy) puts all the mass on the argmax. It reads the same candidates `sample_next`
    draws from, so a display of "what else the model considered" shows the real odds.
    """
    if temperature == 0:
        best = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
        return torch.zeros_like(logits, dtype=torch.float32).scatter_(-1, best, 1.0)
    weights, ids = _candidates(logits, temperature, top_k, top_p)
    probs = weights / weights.sum(dim=-1, keepdim=True)  # (B, N)
    if ids is None:
        return probs
    return torch.zeros_like(logits, dtype=torch.float32).scatter_(-1, ids, probs)  # (B, V)


def _candidates(logits: Tensor, temperature: float, top_k: int | None,
                top_p: float | None) -> tuple[Tensor, Tensor | None]:
    """Non-negative weights (B, N) of the candidate tokens and their ids (B, N), or ids None
    when the candidates are all V tokens in order. Temperature must be > 0."""
    logits = logits.float()
    if temperature != 1.0:  # shifted so the best is 0: a tiny temperature cannot overflow
        # below fp32's smallest normal the divisor would round to 0 and the best become NaN
        temperature = max(temperature, torch.finfo(torch.float32).tiny)
        logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature  # (B, V)
    nucleus = top_p is not None and top_p < 1.0
    if top_k is not None and top_k < logits.size(-1):
        logits, ids = torch.topk(logits, top_k, dim=-1)  # (B, k), descending
        probs = torch.softmax(logits, dim=-1)
        if nucleus:
            probs = probs.masked_fill_(~top_p_keep(probs, top_p), 0.0)
        return probs, ids
    if nucleus:
        return _nucleus(logits, top_p)
    return torch.softmax(logits, dim=-1), None  # (B, V)


def draw(weights: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One index per row of non-negative weights (B, N), with probability proportional to
    its weight; zero weights are never drawn.

    Inverse-CDF sampling: a uniform x in [0, total) lands in exactly one interval
    [cdf[i-1], cdf[i]), found by binary search. At V = 50k this is ~10x faster than
    `torch.multinomial`.
    """
    cdf = weights.cumsum(dim=-1, dtype=torch.float64)  # (B, N)
    total = cdf[:, -1:]  # (B, 1)
    u = torch.rand(total.shape, generator=generator, dtype=torch.float64, device=cdf.device)
    x = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))  # x < total
    choice = torch.searchsorted(cdf, x, right=True)  # (B, 1): the first i with cdf[i] > x
    return choice.clamp_(max=weights.size(-1) - 1)


def _nucleus(logits: Tensor, top_p: float) -> tuple[Tensor, Tensor]:
    """Top-p candidates (probs (B, k) zeroed outside the nucleus, ids (B, k)), descending.

    A trained model's nucleus is usually a few hundred tokens, so this tries the top 64,
    then 512, 4096 candidates (probabilities normalized over all V) before sorting all V.
    """
    V = logits.size(-1)
    log_norm = torch.logsumexp(logits, dim=-1, keepdim=True)  # (B, 1)
    k = 64
    while True:
        if k < V // 4:
            top, ids = torch.topk(logits, k, dim=-1)  # (B, k), descending
        else:
            top, ids = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = (top - log_norm).exp()
        keep = top_p_keep(probs, top_p)
        if k >= V // 4 or not keep[:, -1].any():  # the nucleus ends inside the candidates
            return probs.masked_fill_(~keep, 0.0), ids
        k *= 8
