"""A language model turned classifier: a linear head on the last real token's hidden state.

    ids (B, T), right-padded -> lm.body -> hidden (B, T, C)
        -> the hidden state at each row's last real token (B, C) -> head -> logits (B, L)

Attention is causal, so the last real token has read the whole text and padding after it
changes nothing it computes; the head reads that position and never a pad.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stagegpt.model import LanguageModel


class Classifier(nn.Module):
    """`lm` (any stage) plus `head`: hidden size -> one logit per label."""

    def __init__(self, lm: LanguageModel, n_labels: int):
        super().__init__()
        self.lm = lm
        self.head = nn.Linear(lm.config.n_embd, n_labels)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """ids (B, T) right-padded, lengths (B,) real tokens per row -> logits (B, L)."""
        self.lm.check_length(ids)
        hidden = self.lm.body(ids)  # (B, T, C)
        rows = torch.arange(ids.size(0), device=ids.device)
        last = hidden[rows, lengths - 1]  # (B, C): each row's last real token
        return self.head(last)  # (B, L)


def pad_batch(sequences: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad to the longest sequence: ids (B, T) and lengths (B,)."""
    T = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), T), pad_id, dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
    return ids, torch.tensor([len(s) for s in sequences], dtype=torch.long)


@torch.no_grad()
def predict(model: Classifier, sequences: list[list[int]], pad_id: int,
            batch_size: int = 32) -> Tensor:
    """Class probabilities (N, L) of every sequence, in batches, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        probs = []
        for start in range(0, len(sequences), batch_size):
            ids, lengths = pad_batch(sequences[start:start + batch_size], pad_id)
            device = next(model.parameters()).device
            logits = model(ids.to(device), lengths.to(device))  # (b, L)
            probs.append(torch.softmax(logits.float(), dim=-1).cpu())
        return torch.cat(probs) if probs else torch.empty(0, model.head.out_features)
    finally:
        model.train(was_training)


def scores(predicted: list[int], truth: list[int], labels: list[str]) -> dict:
    """Accuracy and the confusion table {true label: {predicted label: count}}."""
    table = {t: {p: 0 for p in labels} for t in labels}
    for p, t in zip(predicted, truth, strict=True):
        table[labels[t]][labels[p]] += 1
    correct = sum(p == t for p, t in zip(predicted, truth, strict=True))
    return {"accuracy": correct / len(truth) if truth else None, "confusion": table,
            "n": len(truth)}


def majority_baseline(train_labels: list[int], truth: list[int],
                      labels: list[str]) -> tuple[str, float | None]:
    """The most common training label, and the accuracy of always predicting it."""
    counts = [train_labels.count(i) for i in range(len(labels))]
    top = max(range(len(labels)), key=counts.__getitem__)
    return labels[top], (sum(t == top for t in truth) / len(truth) if truth else None)


def format_confusion(table: dict[str, dict[str, int]]) -> str:
    """The confusion table as aligned text: rows are true labels, columns predicted."""
    labels = list(table)
    width = max(6, *(len(x) for x in labels)) + 1
    lines = ["true \\ predicted".ljust(width) + "".join(x[:width - 1].rjust(width)
                                                        for x in labels)]
    for t in labels:
        lines.append(t[:width - 1].ljust(width) + "".join(str(table[t][p]).rjust(width)
                                                          for p in labels))
    return "\n".join(lines)
