"""GPT-2's tanh GELU computed through a sigmoid: the same function, faster on AVX2 CPUs.

GPT-2's GELU is 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3). Since
0.5 (1 + tanh(u)) = sigmoid(2u) for every u, it is also

    gelu(x) = x s,   s = sigmoid(z),   z = 2u = x (C1 + C2 x^2)
    gelu'(x) = s + x s (1 - s) z',     z' = C1 + 3 C2 x^2

with C1 = 2 sqrt(2/pi) and C2 = 0.044715 C1: the two forms differ by fp32 rounding only
(`tests/fast/test_activation.py`). Where PyTorch's kernels are AVX2 its tanh is slow: on
the (768, 512) input of a char-shape MLP, on an EPYC Zen 3 (2 threads), the tanh GELU
took about 840 µs forward and 770 µs backward, a sigmoid 220 µs and an elementwise
product 40. This form's forward and backward, 4 and 5 such passes, took 1.0 ms against
1.7 (2.8 against 4.6 ms on (1024, 1024), 6.4 against 8.9 on the seed shape's (2048,
1024)). So there (`pays()`) `FastModel` puts a `SigmoidGELU` in place of every
`nn.GELU(approximate="tanh")`: a char-shape training step ran 2-7% faster (three A/B runs
in one process, 9-20 interleaved rounds each). With AVX-512 kernels it is not used (not
measured there). For anything but an fp32 input on a CPU (under bf16 autocast the plain
kernel computes in fp32 inside) and under `torch.compile` (which fuses the plain GELU
itself) it runs the plain GELU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

C1 = 2 * math.sqrt(2 / math.pi)
C2 = 0.044715 * C1
PREFERRED: bool | None = None  # None: by CPU (`pays`); True/False force it (tests)


def pays() -> bool:
    """PyTorch runs its AVX2 kernels here, where tanh is slow next to a sigmoid."""
    if PREFERRED is not None:
        return PREFERRED
    return torch.backends.cpu.get_cpu_capability() == "AVX2"


def replaces(layer: nn.Module) -> bool:
    """`layer` is GPT-2's tanh GELU, and a `SigmoidGELU` is faster here."""
    return type(layer) is nn.GELU and layer.approximate == "tanh" and pays()


class SigmoidGELU(nn.GELU):
    """`nn.GELU(approximate="tanh")` as x * sigmoid(z), forward and backward."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != torch.float32 or x.device.type != "cpu" or torch.compiler.is_compiling():
            return F.gelu(x, approximate="tanh")
        return _SigmoidGELU.apply(x)


class _SigmoidGELU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        s = torch.addcmul(x.new_tensor(C1), x, x, value=C2).mul_(x).sigmoid_()  # sigmoid(z)
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        x, s = ctx.saved_tensors
        t = torch.addcmul(x.new_tensor(C1), x, x, value=3 * C2).mul_(x)  # x z'
        t.addcmul_(t, s, value=-1)  # x (1 - s) z'
        return torch.addcmul(s, t, s).mul_(grad)  # (s + x s (1 - s) z') grad
