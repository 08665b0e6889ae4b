"""`OneDNNLinear`: an `nn.Linear` whose products run through oneDNN.

It holds the very same parameter tensors (and hooks) as the layer it stands in for
(`stagegpt.fast.swap`) and computes `onednn.linear(x, weight, bias)`, which equals
`F.linear(x, weight, bias)` (`tests/fast`).
"""

from __future__ import annotations

from torch import Tensor, nn

from stagegpt.fast import onednn


class OneDNNLinear(nn.Linear):
    """`nn.Linear` whose fp32 CPU products of many rows run in oneDNN."""

    def forward(self, x: Tensor) -> Tensor:
        return onednn.linear(x, self.weight, self.bias)
