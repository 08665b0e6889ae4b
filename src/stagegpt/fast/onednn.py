"""fp32 matrix products through oneDNN, for CPUs where PyTorch's default BLAS is slow.

PyTorch's fp32 `mm`/`addmm`/`F.linear` call MKL, which on AMD CPUs runs its AVX2 code;
oneDNN, also inside every PyTorch CPU build, uses AVX-512 there and measures about twice
as fast on the products of training (the `stagegpt bench` ceilings show both). On Intel
CPUs MKL runs its AVX-512 code itself, and there the conversions below are pure cost
(a stage 5 training step took 1.36x longer at the seed shape, 1.59x at the char shape,
measured on a 2-core Xeon); on AMD CPUs without AVX-512 MKL's AVX2 code is the faster
one (`stagegpt.fast.cpu`). So the path is taken only where it pays (`preferred()`). It is
reached through public APIs only: `F.linear` on an input converted with
`Tensor.to_mkldnn()`, the result converted back with `Tensor.to_dense()`. Each
conversion is a plain copy, small next to the product it feeds.

`linear(x, weight, bias)` is `F.linear` with that path in forward and backward. Small
products are left to PyTorch's own (C++) autograd of the oneDNN product; from
LARGE_MACS multiply-adds up, `_Linear` does the backward itself, faster: the gradients
as two more oneDNN products. It falls back to `F.linear` whenever the path does not
apply or would not pay: fewer than MIN_ROWS rows (decoding), anything but fp32 on a
CPU, under autocast (bf16 products already go to oneDNN), under `torch.compile`, on a
CPU where MKL is as fast, or with `ENABLED = False`. `PREFERRED = True` (or False)
overrides the choice by CPU, as the tests do to run this path on any machine.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from stagegpt.fast import cpu

ENABLED = True
PREFERRED: bool | None = None  # None: by CPU (see `pays_on_this_cpu`); True/False force it
MIN_ROWS = 64  # below this (e.g. one token while decoding) the conversions do not pay
LARGE_MACS = 1 << 26  # from here on `_Linear`'s backward beats PyTorch's


def available() -> bool:
    """oneDNN is in this build, enabled, and not switched off here."""
    return ENABLED and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


@functools.cache
def pays_on_this_cpu() -> bool:
    """oneDNN beats MKL where MKL runs its AVX2 code on an AVX-512 CPU: AMD's recent ones.
    Elsewhere (Intel, AMD without AVX-512, ARM) it does not (`stagegpt.fast.cpu`)."""
    return cpu.amd_x86() and cpu.avx512()


def preferred() -> bool:
    """oneDNN is available and, on this CPU (or by `PREFERRED`), faster than the default."""
    return available() and (pays_on_this_cpu() if PREFERRED is None else PREFERRED)


def applies(x: Tensor, weight: Tensor) -> bool:
    """True if `x @ weight.T` should go through oneDNN here."""
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and x.numel() >= MIN_ROWS * x.size(-1) and preferred()
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling())


def matmul_nt(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x (M, K) @ weight (N, K).T + bias -> dense (M, N), in oneDNN.

    `weight` is used in place when contiguous; a transposed view would be copied per call.
    """
    return F.linear(x.to_mkldnn(), weight, bias).to_dense()


class _Linear(torch.autograd.Function):
    """`F.linear` for large products: all three products in oneDNN, each input converted once."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        x2 = x.reshape(-1, x.size(-1))  # (M, in)
        ctx.save_for_backward(x2, weight)
        ctx.has_bias = bias is not None
        y = matmul_nt(x2, weight.contiguous(), bias)  # (M, out)
        return y.view(*x.shape[:-1], weight.size(0))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x2, weight = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.size(-1))  # (M, out)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = matmul_nt(g2, weight.t().contiguous()).view(*grad.shape[:-1], -1)
        if ctx.needs_input_grad[1]:
            grad_w = matmul_nt(g2.t(), x2.t().contiguous())  # (out, M) @ (M, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g2.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.linear(x, weight, bias)`, through oneDNN when `applies(x, weight)`."""
    if not applies(x, weight):
        return F.linear(x, weight, bias)
    if (x.numel() * weight.size(0) >= LARGE_MACS and torch.is_grad_enabled()
            and (x.requires_grad or weight.requires_grad
                 or (bias is not None and bias.requires_grad))):
        return _Linear.apply(x, weight, bias)
    y = matmul_nt(x.reshape(-1, x.size(-1)), weight.contiguous(), bias)  # autograd: PyTorch's
    return y.view(*x.shape[:-1], weight.size(0))
