"""Cross-entropy of a linear head without materializing the full (N, V) logits.

With a 50,257-token vocabulary the logits of a training batch are hundreds of MB, and
writing them, soft-maxing them and reading them back costs more than the whole
transformer stack at small widths. Here the head and the loss run chunk by chunk over
the rows; the gradient of each chunk is computed right away (softmax - one_hot), so the
backward pass is only a scale by the incoming gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CHUNK_ELEMENTS = 1 << 22  # logits per chunk (16 MB in fp32): stays in cache-friendly range


def chunk_rows(vocab_size: int) -> int:
    return max(1, CHUNK_ELEMENTS // vocab_size)


class LinearCrossEntropy(torch.autograd.Function):
    """mean_i CE(hidden_i @ weight.T + bias, targets_i), with gradients built in forward."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                rows: int) -> Tensor:
        n = hidden.size(0)
        need_grad = any(ctx.needs_input_grad[:3])
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_grad else None
        grad_bias = None
        if need_grad and bias is not None:
            grad_bias = torch.zeros_like(bias, dtype=torch.float32)
        w = weight.to(hidden.dtype)
        for start in range(0, n, rows):
            h = hidden[start:start + rows]  # (n_c, C)
            tgt = targets[start:start + rows]  # (n_c,)
            logits = F.linear(h, w, None if bias is None else bias.to(h.dtype)).float()
            lse = torch.logsumexp(logits, dim=-1)  # (n_c,)
            total += (lse - logits.gather(1, tgt[:, None]).squeeze(1)).sum()
            if not need_grad:
                continue
            grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place: (n_c, V)
            grad[torch.arange(len(tgt), device=grad.device), tgt] -= 1.0
            grad.div_(n)
            grad_low = grad.to(h.dtype)
            grad_hidden[start:start + rows] = grad_low @ w  # (n_c, C)
            grad_weight += (grad_low.t() @ h).float()  # (V, C)
            if grad_bias is not None:
                grad_bias += grad.sum(0)
        if need_grad:
            ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
            ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total / n

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.dtypes
        grad_hidden = grad_hidden * grad_out.to(grad_hidden.dtype)
        grad_weight = (grad_weight * grad_out).to(weight_dtype)
        if grad_bias is not None:
            grad_bias = (grad_bias * grad_out).to(bias_dtype)
        return grad_hidden, grad_weight, grad_bias, None, None


def chunked_cross_entropy(hidden: Tensor, weight: Tensor, bias: Tensor | None,
                          targets: Tensor, rows: int | None = None) -> Tensor:
    """Mean cross-entropy of `hidden (N, C) @ weight (V, C).T + bias` against `targets (N,)`."""
    rows = rows or chunk_rows(weight.size(0))
    return LinearCrossEntropy.apply(hidden, weight, bias, targets, rows)
