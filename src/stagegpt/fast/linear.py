"""`OneDNNLinear`: an `nn.Linear` whose products run through oneDNN.

It holds the very same parameter tensors (and hooks) as the layer it stands in for
(`stagegpt.fast.swap`) and computes `onednn.linear(x, weight, bias)`, which equals
`F.linear(x, weight, bias)` (`tests/fast`).
"""

from __future__ import annotations

from torch import Tensor, nn

from stagegpt.fast import onednn
from stagegpt.fast.swap import sharing


class OneDNNLinear(nn.Linear):
    """`nn.Linear` whose fp32 CPU products of many rows run in oneDNN."""

    @classmethod
    def sharing(cls, linear: nn.Linear) -> OneDNNLinear:
        """A stand-in for `linear` that shares its parameters, hooks and training flag."""
        return sharing(cls, linear)

    def forward(self, x: Tensor) -> Tensor:
        return onednn.linear(x, self.weight, self.bias)
