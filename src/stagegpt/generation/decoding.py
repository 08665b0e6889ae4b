"""Sampling from any stage: temperature, top-k, top-p, a KV cache, a rolling context window.

One decoding step:

    window (the last <= block_size tokens) -> body -> last hidden state (B, C)
        -> lm_head -> logits (B, V) -> temperature, top-k, top-p -> sample -> next ids (B, 1)

With the cache, the prompt's window runs through the model once (the prefill) and every
later step feeds only the newest token, at its absolute position, while each attention
layer reads the keys and values of the earlier positions from its `KVCache`. Stages 1-2
have no attention and no cache: a token's hidden state depends only on the token and its
position, so their cached path feeds the newest token alone (past `block_size`, the window).

When the sequence outgrows `block_size` the window rolls forward: the context is the last
`block_size` tokens at positions 0..block_size-1. With learned positions (`wpe`, stages
2-6) rolling shifts every position and invalidates every cached key and value; the cache
is rebuilt by a prefill of the new window, so past `block_size` it saves nothing. With
rotary positions (stages 7-9) attention depends only on distances, so a full cache slides
along instead (`model.roll_cache`): the oldest entry goes, the rest turn back one
position, and each new token still costs one step (`slide=True`, the default). A deeper
layer then keeps what it computed while the dropped token was visible, so with more than
one layer the tokens can differ from a run of the bare window; with `slide=False` every
stage runs the window again, and greedy decoding with and without the cache gives the
same tokens.

The steps themselves come from a decoder: `PlainDecoder` runs the model as written (hooks
fire on every step); `stagegpt.fast.FastDecoder`, the default (`fast=True`), computes the
same logits faster on a CPU.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing

import torch
from torch import Tensor

from stagegpt.errors import StagegptError
from stagegpt.fast import FastDecoder
from stagegpt.generation.sampling import check_sampling_args, sample_next
from stagegpt.limits import check_fits
from stagegpt.model.layers import KVCache, eval_mode
from stagegpt.model.stages import LanguageModel


class PlainDecoder:
    """The three operations decoding needs, through the plain model's own forward path."""

    def __init__(self, model: LanguageModel):
        self.model = model

    def prefill(self, window: Tensor, caches: list[KVCache] | None) -> Tensor:
        """The last hidden state (B, C) of `window` (B, T) at positions 0..T-1."""
        return self.model.body(window, caches, 0)[:, -1]

    def step(self, ids: Tensor, caches: list[KVCache] | None, pos: int) -> Tensor:
        """The hidden state (B, C) of one new token per row, ids (B, 1), at `pos`."""
        return self.model.body(ids, caches, pos)[:, -1]

    def head(self, hidden: Tensor) -> Tensor:
        """Logits (B, V): the head on the positions sampled from, not on the whole window."""
        return self.model.lm_head(hidden)


def stream(model: LanguageModel, idx: Tensor, max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
           stop_ids: Iterable[int] = (), use_cache: bool = True, fast: bool = True,
           on_logits: Callable[[Tensor], object] | None = None,
           slide: bool = True) -> Iterator[Tensor]:
    """Yield each new column of token ids (B, 1) as soon as it is sampled.

    Arguments are those of `generate`. They are checked now, before the first token. The
    model is in eval mode until the iterator is exhausted or closed; its training flag is
    then restored. The yielded columns are views of one preallocated (B, T + n) buffer.
    on_logits: called with the logits (B, V) each column is sampled from, just before the
    draw (`sampling_probs` turns them into the distribution the draw uses).
    """
    out, T, stop = _start(model, idx, max_new_tokens, temperature, top_k, top_p, seed, stop_ids)
    return _decode(model, out, T, max_new_tokens, temperature, top_k, top_p, seed, stop,
                   use_cache, fast, on_logits, slide)


def generate(model: LanguageModel, idx: Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stop_ids: Iterable[int] = (), use_cache: bool = True, fast: bool = True,
             on_token: Callable[[Tensor], object] | None = None, slide: bool = True) -> Tensor:
    """Continue the prompts `idx` (B, T) by up to `max_new_tokens`; return (B, T + n).

    temperature: 0 is greedy; otherwise logits are divided by it before sampling.
    top_k: sample among the k most likely tokens only (exactly k, even when logits tie).
    top_p: sample from the smallest set of tokens whose probability reaches top_p.
    seed: seeds a private `torch.Generator`, so a seed always gives the same sample.
    stop_ids: a row that samples one of these is done; it repeats its stop id while the
        other rows go on, and generation ends early (n < max_new_tokens) once all are done.
    use_cache: decode with a KV cache; False recomputes the whole window every step.
    fast: decode through `stagegpt.fast.FastDecoder` (the same logits, faster on a CPU);
        False runs the plain model's modules on every step. Either way module hooks fire
        on every step: a model with hooks decodes plainly.
    on_token: called with each new column of ids (B, 1) as it is produced.
    slide: past block_size, a model with relative positions (stages 7-9) slides its full
        cache along, one step per token (streaming: deeper layers keep what they computed
        while the dropped token was visible); False runs the whole window again, as stages
        1-6 must, which gives exactly the tokens of decoding without a cache.

    Prompts longer than `block_size` are cropped to their last `block_size` tokens, and
    so is the context once generation runs past it (see the module docstring).
    """
    out, T, stop = _start(model, idx, max_new_tokens, temperature, top_k, top_p, seed, stop_ids)
    n = 0
    with closing(_decode(model, out, T, max_new_tokens, temperature, top_k, top_p, seed,
                         stop, use_cache, fast, slide=slide)) as columns:
        for column in columns:
            n += 1
            if on_token is not None:
                on_token(column)
    return out[:, :T + n]


def _start(model: LanguageModel, idx: Tensor, max_new_tokens: int, temperature: float,
           top_k: int | None, top_p: float | None, seed: int | None,
           stop_ids: Iterable[int] | None) -> tuple[Tensor, int, list[int]]:
    """Check the arguments; return the output buffer (B, T + n) holding the prompt, T, and
    the stop ids."""
    check_sampling_args(max_new_tokens, temperature, top_k, top_p, seed)
    if not isinstance(model, LanguageModel):
        raise StagegptError(f"model must be a stagegpt LanguageModel, got {type(model).__name__}",
                            "model")
    if (not isinstance(idx, Tensor) or idx.dim() != 2 or idx.is_floating_point()
            or idx.dtype == torch.bool or idx.is_complex()):
        raise StagegptError("idx must be a (batch, time) integer tensor of token ids; use "
                            "idx[None] for a single prompt", "idx")
    B, T = idx.shape
    if B == 0 or T == 0:
        raise StagegptError(f"idx is an empty prompt batch of shape {tuple(idx.shape)}; give "
                            "every prompt at least one token (e.g. the tokenizer's start id)",
                            "idx")
    vocab_size = model.config.vocab_size
    if idx.min() < 0 or idx.max() >= vocab_size:
        raise StagegptError(f"idx holds token ids outside [0, {vocab_size}) for this model; "
                            "encode the prompt with the model's own tokenizer", "idx")
    stop = checked_stop_ids(stop_ids, vocab_size)
    check_fits(8 * B * (T + max_new_tokens), f"idx: {B:,} rows of {T + max_new_tokens:,} ids",
               "generate fewer rows or tokens at a time", "idx")
    device = next(model.parameters()).device
    out = torch.empty(B, T + max_new_tokens, dtype=torch.long, device=device)
    out[:, :T] = idx
    return out, T, stop


def checked_stop_ids(stop_ids: Iterable[int] | None, vocab_size: int) -> list[int]:
    """The stop ids as a sorted list, each an int in the vocabulary."""
    if stop_ids is None:
        return []
    if isinstance(stop_ids, str | bytes) or not isinstance(stop_ids, Iterable):
        raise StagegptError(f"stop_ids must be a list of token ids, got "
                            f"{type(stop_ids).__name__}", "stop_ids")
    given = list(stop_ids)
    try:  # ints and numpy's integers; not bools, floats or strings
        ids = [operator.index(i) for i in given if not isinstance(i, bool)]
    except TypeError:
        ids = []
    if len(ids) != len(given) or not all(0 <= i < vocab_size for i in ids):
        raise StagegptError(f"stop_ids must be token ids in [0, {vocab_size}), got "
                            f"{given!r:.60}", "stop_ids")
    return sorted(set(ids))


def _decode(model: LanguageModel, out: Tensor, T: int, n: int, temperature: float,
            top_k: int | None, top_p: float | None, seed: int | None,
            stop_ids: list[int], use_cache: bool, fast: bool,
            on_logits: Callable[[Tensor], object] | None = None,
            slide: bool = True) -> Iterator[Tensor]:
    """The decoding loop: writes new ids into `out[:, T:]` and yields each column."""
    if n == 0:
        return
    B, device = out.size(0), out.device
    block_size = model.config.block_size
    generator = None
    if seed is not None and temperature > 0:
        generator = torch.Generator(device=device).manual_seed(seed)
    stop = torch.tensor(stop_ids, dtype=torch.long, device=device)
    finished = torch.zeros(B, 1, dtype=torch.bool, device=device)
    with eval_mode(model):
        decoder = FastDecoder(model, n) if fast else PlainDecoder(model)
        with torch.inference_mode():
            dtype = next(model.parameters()).dtype
            caches = model.make_kv_cache(B, device, dtype) if use_cache else None
            last = decoder.prefill(out[:, max(0, T - block_size):T], caches)  # (B, C)
        pos = min(T, block_size)  # where the next token goes in the cache
        for t in range(T, T + n):
            with torch.inference_mode():
                if t > T and use_cache and pos < block_size:  # one new token, cache the rest
                    last = decoder.step(out[:, t - 1:t], caches, pos)  # (B, C)
                    pos += 1
                elif t > T and use_cache and slide and model.roll_cache(caches):  # relative
                    last = decoder.step(out[:, t - 1:t], caches, block_size - 1)
                elif t > T:  # no cache, or the window rolled: run the whole window
                    last = decoder.prefill(out[:, max(0, t - block_size):t], caches)
                logits = decoder.head(last)  # (B, V): the head on the last position only
                if on_logits is not None:
                    on_logits(logits)
                column = sample_next(logits, temperature, top_k, top_p, generator)  # (B, 1)
                if len(stop):
                    column = torch.where(finished, out[:, t - 1:t], column)  # done rows repeat
                    finished |= torch.isin(column, stop)
                out[:, t:t + 1] = column
            yield out[:, t:t + 1]
            if len(stop) and finished.all():
                return
