"""A second measure beside loss: pick the true ending among four, HellaSwag-style.

Each item is a context from the val split, its true continuation, and three endings cut
from elsewhere in the split. A model "answers" by the ending it finds most likely: the
lowest summed loss of the ending's tokens given the context (accuracy), or the lowest
mean loss per token (length-normalized accuracy, which does not favour short endings).
Chance is 25%. Items depend only on the tokens and the seed, so every stage of a ladder
answers the same questions; the test needs no labels, so any prepared data has one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from stagegpt.data.datasets import check_ids_fit, load_split, read_meta
from stagegpt.errors import StagegptError
from stagegpt.interop import load_checkpoint
from stagegpt.model import LanguageModel
from stagegpt.model.layers import eval_mode
from stagegpt.tools.evaluate import SCORE_TOKENS, split_loss
from stagegpt.values import is_int

CHOICES = 4
DEFAULT_ITEMS = 400
DEFAULT_CONTEXT = 48
DEFAULT_ENDING = (8, 16)  # ending lengths in tokens, drawn per ending
MAX_ITEMS = 100_000


@dataclass
class Item:
    context: list[int]
    endings: list[list[int]]  # CHOICES endings, the true one among them
    answer: int  # index of the true ending


@dataclass
class EndingsScore:
    accuracy: float  # lowest summed loss picks the true ending
    accuracy_norm: float  # lowest loss per token picks it
    items: int
    chance: float = 1 / CHOICES


def check_item_args(items: int, context: int, ending: tuple[int, int], seed: int = 0) -> None:
    if isinstance(items, bool) or not isinstance(items, int) or not 1 <= items <= MAX_ITEMS:
        raise StagegptError(f"items must be an integer in [1, {MAX_ITEMS:,}], got {items!r}",
                            "items")
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise StagegptError(f"context must be an integer >= 1, got {context!r}", "context")
    if not isinstance(ending, tuple | list) or len(ending) != 2 or not all(
            isinstance(n, int) and not isinstance(n, bool) for n in ending) or not (
            1 <= ending[0] <= ending[1]):
        raise StagegptError(f"ending must be two lengths 1 <= low <= high, got {ending!r:.60}",
                            "ending")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise StagegptError(f"seed must be an integer in [0, 2^63), got {seed!r}", "seed")


def make_items(tokens: np.ndarray, items: int = DEFAULT_ITEMS, context: int = DEFAULT_CONTEXT,
               ending: tuple[int, int] = DEFAULT_ENDING, seed: int = 0) -> list[Item]:
    """`items` questions from `tokens` (a split), the same for the same tokens and seed."""
    check_item_args(items, context, ending, seed)
    low, high = ending
    span = context + high
    if len(tokens) < 4 * span:
        raise StagegptError(f"the split holds {len(tokens):,} tokens; the endings test needs "
                            f"at least {4 * span:,} (4 x (context + longest ending)))")
    rng = np.random.default_rng(seed)
    return [_item(tokens, rng, context, low, high) for _ in range(items)]


class TooAlike(StagegptError):
    """The split cannot supply four different endings of the asked lengths."""


MAX_DRAWS = 10_000  # per item: plenty for any varied text, and a bound for one that is not


def _item(tokens: np.ndarray, rng: np.random.Generator, context: int, low: int,
          high: int) -> Item:
    start = int(rng.integers(0, len(tokens) - context - high + 1))
    cut = start + context  # where the true ending begins
    true = tokens[cut:cut + int(rng.integers(low, high + 1))].tolist()
    endings, draws = [true], 0
    while len(endings) < CHOICES:
        draws += 1
        if draws > MAX_DRAWS:
            raise TooAlike(f"ending of {low}-{high} tokens: the split holds too few different "
                           f"token runs for {CHOICES} different endings; ask for longer "
                           "endings, or score a more varied split", "ending")
        other = int(rng.integers(0, len(tokens) - high + 1))
        if abs(other - cut) < high:  # would overlap the true ending
            continue
        candidate = tokens[other:other + int(rng.integers(low, high + 1))].tolist()
        if candidate not in endings:
            endings.append(candidate)
    order = rng.permutation(CHOICES)
    shuffled = [endings[i] for i in order]
    return Item(tokens[start:cut].tolist(), shuffled, int(np.argmin(order)))


def window_defaults(block_size: int) -> tuple[int, tuple[int, int]]:
    """(context, ending): the default test shrunk to fit a `block_size` window, endings of
    up to a quarter of the window and the rest context."""
    high = min(DEFAULT_ENDING[1], max(1, block_size // 4))
    return max(1, min(DEFAULT_CONTEXT, block_size - high)), (max(1, high // 2), high)


def items_for_window(tokens: np.ndarray, block_size: int, seed: int = 0) -> list[Item] | None:
    """The default test fitted to a `block_size` window (None if the split is too short
    or too uniform for it)."""
    context, ending = window_defaults(block_size)
    high = ending[1]
    if len(tokens) < 4 * (context + high):
        return None
    try:
        return make_items(tokens, DEFAULT_ITEMS, context, ending, seed)
    except TooAlike:  # a source of a handful of tokens: the ladder shows "-"
        return None


def ending_losses(model: LanguageModel, pairs: list[tuple[list[int], list[int]]]) -> Tensor:
    """Summed next-token loss of each (context, ending) pair's ending -> (N,) tensor.

    Each context is cropped from the left to fit the model's window; the rows are
    right-padded to one length and the padding's loss is masked out.
    """
    longest = max(len(e) for _, e in pairs)
    pairs = [(c[-(model.config.block_size - longest):], e) for c, e in pairs]
    width = max(len(c) + len(e) for c, e in pairs)
    rows = [c + e + [0] * (width - len(c) - len(e)) for c, e in pairs]
    idx = torch.tensor(rows, device=next(model.parameters()).device)  # (N, T)
    logits, _ = model(idx[:, :-1])  # (N, T-1, V)
    losses = F.cross_entropy(logits.float().transpose(1, 2), idx[:, 1:],
                             reduction="none")  # (N, T-1)
    mask = torch.zeros_like(losses)
    for row, (context, ending) in enumerate(pairs):
        first = len(context) - 1  # the position whose target is the ending's first token
        mask[row, first:first + len(ending)] = 1
    return (losses * mask).sum(dim=1)  # (N,)


@torch.no_grad()
def score_endings(model: LanguageModel, items: list[Item], batch: int = 32) -> EndingsScore:
    """How often `model` ranks each item's true ending first (`batch` items per forward)."""
    longest = max(len(e) for item in items for e in item.endings)
    check_fits_window(longest, model.config.block_size)
    correct = correct_norm = 0
    with eval_mode(model):
        for first in range(0, len(items), batch):
            chunk = items[first:first + batch]
            pairs = [(item.context, e) for item in chunk for e in item.endings]
            summed = ending_losses(model, pairs).view(len(chunk), CHOICES)  # (b, 4)
            lengths = torch.tensor([[len(e) for e in item.endings] for item in chunk],
                                   device=summed.device)  # (b, 4)
            answers = torch.tensor([item.answer for item in chunk], device=summed.device)
            correct += int((summed.argmin(dim=1) == answers).sum())
            correct_norm += int(((summed / lengths).argmin(dim=1) == answers).sum())
    return EndingsScore(correct / len(items), correct_norm / len(items), len(items))


def check_fits_window(longest: int, block_size: int) -> None:
    if longest >= block_size:
        raise StagegptError(f"ending of up to {longest} tokens leaves no context in the "
                            f"model's window of {block_size}; ask for endings shorter than "
                            f"{block_size} tokens", "ending")


def fill_ending(ending: Any, fitted: tuple[int, int]) -> Any:
    """`ending` with a length left as None taken from `fitted`, but never past the other
    one: (None, 3) asks for endings of at most 3 tokens, (20, None) of at least 20."""
    if ending is None:
        return fitted
    if not isinstance(ending, tuple | list) or len(ending) != 2:
        return ending  # check_item_args refuses it
    low, high = ending
    if low is None:
        low = min(fitted[0], high) if is_int(high) else fitted[0]
    if high is None:
        high = max(fitted[1], low) if is_int(low) else fitted[1]
    return low, high


def evaluate_checkpoint(ckpt_dir: str | Path, data_dir: str | Path, items: int = DEFAULT_ITEMS,
                        context: int | None = None,
                        ending: tuple[int | None, int | None] | None = None,
                        seed: int = 0, dtype: str = "float32") -> dict:
    """Val loss and the endings test of a checkpoint on a data dir's val split.

    context and ending (either length of it, or both) default to DEFAULT_CONTEXT and
    DEFAULT_ENDING, shrunk to fit the model's window as the ladder's test does
    (window_defaults)."""
    check_item_args(items, DEFAULT_CONTEXT if context is None else context,
                    fill_ending(ending, DEFAULT_ENDING), seed)
    ckpt = load_checkpoint(ckpt_dir, dtype=dtype)
    fitted_context, fitted_ending = window_defaults(ckpt.model.config.block_size)
    context = fitted_context if context is None else context
    ending = tuple(fill_ending(ending, fitted_ending))
    check_fits_window(ending[1], ckpt.model.config.block_size)
    meta = read_meta(data_dir)
    same = ckpt.tokenizer is None or ckpt.tokenizer.to_spec() == meta["tokenizer"]
    if not same or meta["vocab_size"] > ckpt.model.config.vocab_size:
        raise StagegptError(f"{data_dir} was tokenized with another tokenizer than the "
                            f"checkpoint {ckpt_dir}; evaluate on data prepared with the "
                            "tokenizer the model was trained with")
    tokens = load_split(data_dir, "val")
    check_ids_fit(tokens, ckpt.model.config.vocab_size, f"{data_dir}/val.bin")
    val_loss = split_loss(ckpt.model, tokens, max_tokens=SCORE_TOKENS, check_ids=False)
    score = score_endings(ckpt.model, make_items(tokens, items, context, ending, seed))
    return {"val_loss": val_loss, "val_ppl": math.exp(val_loss), **asdict(score)}
