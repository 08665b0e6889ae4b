"""Loss curves as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from stagegpt.fileio import atomic_file


def save_figure(fig: plt.Figure, path: str | Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    with atomic_file(path, "wb") as f:
        f.write(buffer.getvalue())


def plot_run(rows: list[dict], path: str | Path, title: str = "") -> None:
    """Train loss per step and val loss at each evaluation."""
    fig, ax = plt.subplots(figsize=(7, 4))
    train = [(r["step"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    if train:
        ax.plot(*zip(*train, strict=True), label="train", alpha=0.6, linewidth=1)
    if val:
        ax.plot(*zip(*val, strict=True), label="val", marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def plot_curves(curves: dict[str, list[tuple[float, float]]], path: str | Path,
                hlines: dict[str, float] | None = None, title: str = "",
                xlabel: str = "step") -> None:
    """Several validation curves on one plot, with optional reference lines."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, points in curves.items():
        if points:
            ax.plot(*zip(*points, strict=True), label=label, marker="o", markersize=2)
    for (label, value), style in zip((hlines or {}).items(), ("--", ":", "-."), strict=False):
        ax.axhline(value, linestyle=style, color="black", linewidth=1, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)
