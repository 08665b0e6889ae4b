"""Attention heatmaps: who each token looks at, per layer and head.

Row i of a head's map is the softmax distribution query token i spreads over the key
tokens 0..i: each row sums to 1 and everything above the diagonal is 0 (the causal mask).
`attention_maps` returns those weights as data, and `plot_attention` draws exactly the
weights it returns, so tests can check the numbers instead of the picture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from stagegpt.errors import StagegptError
from stagegpt.model.layers import attention_layers, eval_mode, explicit_attention
from stagegpt.model.stages import LanguageModel

VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "\\r"}


@dataclass
class AttentionMaps:
    """The causal attention weights of one text and which (layer, head) maps were drawn."""

    tokens: list[str]              # display string of each token (the axes' labels)
    ids: list[int]
    weights: Tensor                # (n_layer, n_head, T, T) float32, on the CPU
    panels: list[tuple[int, int]]  # (layer, head) of each heatmap, in drawing order
    path: Path | None = None

    def panel(self, layer: int, head: int) -> Tensor:
        """The (T, T) map of one head: row = query token, column = key token."""
        return self.weights[layer, head]


def token_labels(tokenizer: Any, ids: list[int]) -> list[str]:
    """Each token on its own, with whitespace made visible (␣ space, ↵ newline)."""
    labels = []
    for i in ids:
        text = tokenizer.decode_bytes([i]).decode("utf-8", errors="replace")
        labels.append("".join(VISIBLE.get(ch, ch) for ch in text) or "∅")
    return labels


@torch.no_grad()
def attention_maps(model: LanguageModel, ids: Tensor, layer: int | None = None,
                   head: int | None = None) -> Tensor:
    """Attention weights of every layer for token ids (1, T) -> (n_layer, n_head, T, T).

    One eval-mode forward pass with the attention written out (`explicit_attention`); a
    forward hook on each layer's `softmax` module records the weights it produces.
    `layer` and `head` (0-based) keep only that layer's or head's (a size-1 dim in its
    place): a long text on a large model then holds one map, not L x nh of them.
    """
    layers = attention_layers(model)
    if not layers:
        raise StagegptError(f"stage {model.stage} has no attention to plot; use a checkpoint "
                            "of stage 3 to 9")
    check_ids(model, ids)
    kept_layers = _pick(len(layers), layer, "layer")
    kept_heads = _pick(layers[0].n_head, head, "head")
    seen: list[Tensor] = []
    with eval_mode(model), explicit_attention(model) as layers:
        hooks = [layers[i].softmax.register_forward_hook(
            lambda _module, _inputs, weights: seen.append(weights[0, kept_heads].float().cpu()))
            for i in kept_layers]
        try:
            model(ids.to(next(model.parameters()).device))
        finally:
            for hook in hooks:
                hook.remove()
    return torch.stack(seen)  # (L, nh, T, T), or the kept ones


def check_ids(model: LanguageModel, ids: Tensor) -> None:
    """ids: (1, T) token ids in the model's vocabulary, 1 <= T <= block_size."""
    if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.size(0) != 1 or (
            ids.dtype != torch.long):
        shape = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
        raise StagegptError(f"ids must be a tensor of token ids of shape (1, T), got {shape}",
                            "ids")
    if not 1 <= ids.size(1) <= model.config.block_size:
        raise StagegptError(f"ids must hold 1 to {model.config.block_size} tokens (the model's "
                            f"context), got {ids.size(1)}", "ids")
    if not 0 <= int(ids.min()) <= int(ids.max()) < model.config.vocab_size:
        raise StagegptError(f"ids must be token ids in [0, {model.config.vocab_size}), the "
                            "model's vocabulary", "ids")


def _pick(count: int, index: int | None, what: str) -> list[int]:
    if index is None:
        return list(range(count))
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
        raise StagegptError(f"{what} must be between 0 and {count - 1} for this model, "
                            f"got {index}", what)
    return [index]


def encode_text(model: LanguageModel, tokenizer: Any, text: str) -> list[int]:
    if tokenizer is None:
        raise StagegptError("this checkpoint has no tokenizer, so the text cannot be encoded; "
                            "use a checkpoint written by `stagegpt train`")
    if not isinstance(text, str) or not text:
        raise StagegptError(f"text must be a non-empty string, got {text!r:.40}; give the text "
                            "whose attention to plot", "text")
    ids = tokenizer.encode(text)
    block_size = model.config.block_size
    if len(ids) > block_size:
        raise StagegptError(f"text is {len(ids)} tokens but the model's context is "
                            f"{block_size}; shorten it", "text")
    if not ids:
        raise StagegptError("text encodes to no tokens; give a longer one", "text")
    return ids


def plot_attention(model: LanguageModel, tokenizer: Any, text: str,
                   out: str | Path | None = None, layer: int | None = None,
                   head: int | None = None) -> AttentionMaps:
    """Heatmaps of the causal attention over `text`; a layers x heads grid by default.

    `layer` and `head` (0-based) narrow the grid to one layer, one head, or one map.
    Writes a PNG to `out` (atomically) when given. Returns the weights that were drawn.
    """
    if out is not None and Path(out).suffix.lower() != ".png":
        raise StagegptError(f"out must name a .png file, got {str(out)[:80]!r}", "out")
    ids = encode_text(model, tokenizer, text)
    weights = attention_maps(model, torch.tensor([ids]))
    n_layer, n_head = weights.shape[:2]
    layers, heads = _pick(n_layer, layer, "layer"), _pick(n_head, head, "head")
    maps = AttentionMaps(token_labels(tokenizer, ids), ids, weights,
                         [(li, hi) for li in layers for hi in heads])
    if out is not None:
        from stagegpt.train.plots import save_figure

        save_figure(draw_maps(maps, rows=len(layers), cols=len(heads)), out)
        maps.path = Path(out)
    return maps


MAX_CELLS = 96  # tokens per heatmap side; a longer text shows its last MAX_CELLS


def draw_maps(maps: AttentionMaps, rows: int, cols: int):
    """A rows x cols grid of heatmaps (query tokens down, key tokens across).

    Each row is drawn scaled to its own largest weight: over a long text weights are ~1/T
    and a shared 0-1 scale would show nothing. Past MAX_CELLS tokens the maps show the
    last MAX_CELLS queries over the last MAX_CELLS keys; the data returned is complete.
    """
    from stagegpt.train.plots import plt  # the Agg backend: no display needed

    first = max(0, len(maps.tokens) - MAX_CELLS)
    tokens = maps.tokens[first:]
    T = len(tokens)
    side = min(max(2.6, 0.22 * T + 1.0), 9.0)  # inches per panel
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols + 1.2, side * rows),
                             squeeze=False, layout="constrained")
    step = max(1, math.ceil(T / 48))  # at most ~48 labels per axis
    ticks = list(range(0, T, step))
    labels = [tokens[i] for i in ticks]
    fontsize = 8 if T <= 24 else 6
    rotation = 90 if max(map(len, labels)) > 1 else 0  # single characters read upright
    image = None
    for ax, (li, hi) in zip(axes.flat, maps.panels, strict=True):
        panel = maps.panel(li, hi)[first:, first:]  # (T, T)
        scaled = panel / panel.amax(dim=-1, keepdim=True).clamp_min(1e-12)
        image = ax.imshow(scaled.numpy(), cmap="viridis", vmin=0.0, vmax=1.0,
                          interpolation="nearest")
        shown = f", tokens {first}-{first + T - 1}" if first else ""
        ax.set_title(f"layer {li}, head {hi}{shown}", fontsize=9)
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        ax.set_xticklabels(labels, rotation=rotation, fontsize=fontsize)
        ax.set_yticklabels(labels, fontsize=fontsize)
    for ax in axes[:, 0]:
        ax.set_ylabel("query (attends from)")
    for ax in axes[-1, :]:
        ax.set_xlabel("key (attends to)")
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight / the row's largest")
    return fig
