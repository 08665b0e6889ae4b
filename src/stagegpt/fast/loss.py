"""Cross-entropy of a linear head without materializing the full fp32 (N, V) logits.

With a 50,257-token vocabulary the logits of a training batch are hundreds of MB, and
writing them, soft-maxing them and reading them back costs more than the whole
transformer stack at small widths. Here the head and the loss run chunk by chunk over
the rows, and each chunk's gradient is made in the forward pass, in place:

    for each chunk of rows:   P = softmax(h @ W.T + b)      one matmul, one in-place softmax
                              loss -= log P[i, target_i]
                              P[i, target_i] -= 1           now P = dloss/dlogits (times N)
    for each group of chunks: grad_h = P @ W,  grad_W += P.T @ h,  grad_b += P.sum(0)

so backward is only a scale by the incoming gradient. What makes it fast on a CPU:

- one in-place softmax per chunk (the fused, vectorized kernel) instead of logsumexp,
  subtract, exp and divide passes, each over the whole chunk;
- bf16 gradient matmuls run over groups of up to GROUP_BYTES of P, not chunk by chunk:
  bf16 products need many rows per call to run at full speed (in fp32 a group is one
  chunk);
- the group buffer and the transposed weight are allocated once and kept in a
  `Workspace` that the caller owns (a `FastModel` keeps one for its lifetime): fresh
  tensors of 50-130 MB every step cost a page fault per 4 KB;
- in fp32 on a CPU where oneDNN is preferred (`stagegpt.fast.onednn`), the logits and
  grad_h products run in oneDNN, chunk by chunk while P is in cache; chunks stay under
  32 MB so that their buffers are recycled by the allocator instead of page-faulted in
  afresh;
- in fp32 on a CPU with MKL's products, chunks of about 500 rows (MKL_CHUNK_ELEMENTS):
  MKL's products of a 256-wide hidden state need that many rows to run at speed (a seed
  step took 2.98 s with them, 3.45 s with 250-row chunks held as columns, on an EPYC Zen 3);
  on AMD CPUs (`blocks_pay()`) a chunk's logits are made VOCAB_BLOCK columns at a time, so
  that the block of the weight being read stays in cache (the seed shape's head and loss,
  forward and backward, 1.08-1.25x faster so on an EPYC Zen 3; the same values);
- under `torch.autocast` (bf16) the matmuls run in bf16 and P is kept in bf16; the
  softmax kernel computes in fp32 internally, as autocast's own fp32 softmax would.

The loss is -log P[i, target_i]. A row whose target probability underflows fp32 (a
model confidently wrong by more than ~69 nats) gets its loss recomputed exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from stagegpt.fast import cpu, onednn

CHUNK_ELEMENTS = 6 << 20  # logits per softmax chunk: 24 MB in fp32 (125 rows at V = 50,257)
GROUP_BYTES = 128 << 20  # P held for one round of gradient matmuls (bf16)
MKL_CHUNK_ELEMENTS = 24 << 20  # fp32 with MKL's products: 96 MB (500 rows at V = 50,257)
VOCAB_BLOCK = 512  # MKL's logits, where blocks pay: this many vocabulary columns per product
BLOCKS: bool | None = None  # None: by CPU (`blocks_pay`); True/False force it (tests)
SMALL_LOGITS = 1 << 20  # up to 4 MB of fp32 logits: not worth chunking
TINY = 1e-30  # below this the target probability is recomputed from the logits
LOG_TINY = math.log(TINY)


def chunk_rows(vocab_size: int, mkl: bool = False) -> int:
    """Rows per softmax chunk: CHUNK_ELEMENTS logits, or MKL_CHUNK_ELEMENTS with `mkl`."""
    return max(1, (MKL_CHUNK_ELEMENTS if mkl else CHUNK_ELEMENTS) // vocab_size)


def uses_mkl(h: Tensor, w: Tensor) -> bool:
    """fp32 products on a CPU that runs them in MKL (PyTorch's default), not oneDNN."""
    return h.dtype == torch.float32 and h.device.type == "cpu" and not onednn.applies(h, w)


def group_rows(vocab_size: int, rows: int, dtype: torch.dtype) -> int:
    """One chunk in fp32; in lower precision, as many chunks as fit in GROUP_BYTES."""
    if dtype == torch.float32:
        return rows
    fit = GROUP_BYTES // (vocab_size * torch.finfo(dtype).bits // 8)
    return max(rows, fit // rows * rows)


class Workspace:
    """Named scratch tensors, grown when needed and reused from call to call on a CPU
    (accelerators have caching allocators of their own). Freed with the object."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}

    def get(self, name: str, rows: int, cols: int, dtype: torch.dtype,
            device: torch.device) -> Tensor:
        """A (rows, cols) tensor of undefined contents."""
        key = (name, device, dtype)
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < rows * cols:
            buf = torch.empty(rows * cols, dtype=dtype, device=device)
            if device.type == "cpu":
                self.buffers[key] = buf
        return buf[:rows * cols].view(rows, cols)

    def clear(self) -> None:
        self.buffers.clear()


def _compute_dtype(hidden: Tensor) -> torch.dtype:
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return hidden.dtype


def blocks_pay() -> bool:
    """MKL's (m, C) x (C, V) logits product runs faster column block by column block on
    AMD CPUs, where it takes its generic code (measured on an EPYC Zen 3; Intel: not
    measured, so left whole)."""
    return cpu.amd_x86() if BLOCKS is None else BLOCKS


def _logits_into(out: Tensor, h: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """out (m, V) = h (m, C) @ w.T + b, in blocks of VOCAB_BLOCK columns where they pay."""
    V = w.size(0)
    block = VOCAB_BLOCK if blocks_pay() else V
    for start in range(0, V, block):
        end = min(start + block, V)
        columns = out[:, start:end]  # written in place: (m, end - start), row stride V
        if b is None:
            torch.mm(h, w[start:end].t(), out=columns)
        else:
            torch.addmm(b[start:end], h, w[start:end].t(), out=columns)
    return out


def _exact_loss(h: Tensor, w: Tensor, b: Tensor | None, targets: Tensor) -> Tensor:
    """Summed cross-entropy of a few rows, from freshly computed logits."""
    logits = F.linear(h, w, b).float()
    return F.cross_entropy(logits, targets, reduction="sum")


def _target_loss(p_target: Tensor, h: Tensor, w: Tensor, b: Tensor | None,
                 targets: Tensor, start: int) -> Tensor:
    """-sum log p_target of one chunk's rows (its first is row `start`); where a target
    probability underflowed fp32, the exact loss from freshly computed logits instead."""
    loss = -p_target.clamp_min(TINY).log().sum()
    if bool((p_target < TINY).any()):  # rare: replace -log(TINY) by the truth
        bad = (p_target < TINY).nonzero().squeeze(1) + start
        loss = loss + _exact_loss(h[bad], w, b, targets[bad]) + LOG_TINY * len(bad)
    return loss


def _row_chunks(h: Tensor, w: Tensor, b: Tensor | None, targets: Tensor, rows: int,
                group: int | None, workspace: Workspace) -> tuple[Tensor, tuple]:
    """The summed loss and the unscaled gradients, chunk by chunk of (m, V) logits."""
    n, V = h.size(0), w.size(0)
    dtype = h.dtype
    group = min(n, group or group_rows(V, rows, dtype))
    group = max(rows, group // rows * rows) if group < n else n
    P = workspace.get("P", group, V, dtype, h.device)
    fast = onednn.applies(h, w)  # fp32 on a CPU: the two big products in oneDNN
    if fast:
        w_t = workspace.get("weight_t", h.size(1), V, dtype, h.device)
        w_t.copy_(w.t())
    grad_h = torch.empty(n, h.size(1), dtype=torch.float32, device=h.device)
    grad_w = torch.empty(V, h.size(1), dtype=torch.float32, device=h.device)
    grad_b = None if b is None else torch.zeros(V, dtype=torch.float32,
                                                device=h.device)
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    for g0 in range(0, n, group):
        g1 = min(g0 + group, n)
        for s in range(g0, g1, rows):
            e = min(s + rows, g1)
            p = P[s - g0:e - g0]  # (m, V)
            if fast:
                p.copy_(onednn.matmul_nt(h[s:e], w, b))
            else:
                _logits_into(p, h[s:e], w, b)
            torch.softmax(p, dim=-1, out=p)  # in place
            idx = (torch.arange(e - s, device=p.device), targets[s:e])
            total += _target_loss(p[idx].float(), h, w, b, targets, s)
            p[idx] -= 1.0  # softmax - one_hot: the gradient of the summed loss
            if fast:  # while the chunk is still in cache
                grad_h[s:e] = onednn.matmul_nt(p, w_t)  # (m, C)
        pg = P[:g1 - g0]  # (G, V)
        if dtype == torch.float32:
            if not fast:
                torch.mm(pg, w, out=grad_h[g0:g1])  # (G, C)
            if g0 == 0:
                torch.mm(pg.t(), h[g0:g1], out=grad_w)  # (V, C)
            else:
                grad_w.addmm_(pg.t(), h[g0:g1])
        else:
            grad_h[g0:g1] = pg @ w
            if g0 == 0:
                grad_w.copy_(pg.t() @ h[g0:g1])
            else:
                grad_w += pg.t() @ h[g0:g1]
        if grad_b is not None:
            grad_b += pg.sum(0, dtype=torch.float32)
    return total, (grad_h, grad_w, grad_b)


class LinearCrossEntropy(torch.autograd.Function):
    """mean_i CE(hidden_i @ weight.T + bias, targets_i), with gradients built in forward."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                rows: int, group: int | None, workspace: Workspace) -> Tensor:
        n, V = hidden.size(0), weight.size(0)
        dtype = _compute_dtype(hidden)
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)  # (N, C), (V, C)
            b = None if bias is None else bias.to(dtype)
            rows = rows or chunk_rows(V, uses_mkl(h, w))
            total, grads = _row_chunks(h, w, b, targets, rows, group, workspace)
        ctx.grads = grads
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.n = n
        return total / n

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        if ctx.grads is None:
            raise RuntimeError("LinearCrossEntropy's backward can run only once per forward")
        grad_h, grad_w, grad_b = ctx.grads
        ctx.grads = None  # the buffers are scaled in place and handed over to autograd
        h_dtype, w_dtype, b_dtype = ctx.dtypes
        scale = grad_out.float() / ctx.n
        grad_h = grad_h.mul_(scale).to(h_dtype)
        grad_w = grad_w.mul_(scale).to(w_dtype)
        if grad_b is not None:
            grad_b = grad_b.mul_(scale).to(b_dtype)
        return grad_h, grad_w, grad_b, None, None, None, None


def linear_cross_entropy_loss(hidden: Tensor, weight: Tensor, bias: Tensor | None,
                              targets: Tensor, rows: int | None,
                              workspace: Workspace) -> Tensor:
    """The loss alone (no gradients), chunk by chunk: for evaluation under no_grad."""
    n, V = hidden.size(0), weight.size(0)
    dtype = _compute_dtype(hidden)
    with torch.autocast(hidden.device.type, enabled=False):
        h, w = hidden.detach().to(dtype), weight.detach().to(dtype)
        b = None if bias is None else bias.detach().to(dtype)
        rows = rows or chunk_rows(V, uses_mkl(h, w))
        buf = workspace.get("P", min(rows, n), V, torch.float32, hidden.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for s in range(0, n, rows):
            e = min(s + rows, n)
            z = buf[:e - s]
            if dtype == torch.float32:
                _logits_into(z, h[s:e], w, b)
            else:
                z.copy_(F.linear(h[s:e], w, b))
            torch.log_softmax(z, dim=-1, out=z)
            total -= z.gather(1, targets[s:e, None]).sum()
    return total / n


def chunked_cross_entropy(hidden: Tensor, weight: Tensor, bias: Tensor | None,
                          targets: Tensor, rows: int | None = None,
                          group: int | None = None,
                          workspace: Workspace | None = None) -> Tensor:
    """Mean cross-entropy of `hidden (N, C) @ weight (V, C).T + bias` against `targets (N,)`.

    rows: rows per softmax chunk (default: `chunk_rows`); group: rows per round
    of gradient matmuls (default: see `group_rows`). Left to choose, logits of at most
    SMALL_LOGITS elements (a small vocabulary) take the plain path, which is faster there;
    so do ignored targets (-100, as a fine-tune's masked prompt), which it skips.
    workspace: where the chunk buffers are kept between calls (default: a fresh one).
    """
    workspace = workspace if workspace is not None else Workspace()
    small = rows is None and hidden.size(0) * weight.size(0) <= SMALL_LOGITS
    if small or bool((targets < 0).any()):
        return F.cross_entropy(F.linear(hidden, weight, bias).float(), targets)
    inputs = (hidden, weight) if bias is None else (hidden, weight, bias)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return LinearCrossEntropy.apply(hidden, weight, bias, targets, rows, group, workspace)
    return linear_cross_entropy_loss(hidden, weight, bias, targets, rows, workspace)
