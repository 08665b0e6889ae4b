"""A module swap: the model's `nn.Linear` layers, their products routed through oneDNN.

`OneDNNLinear` is an `nn.Linear` that holds the very same parameter tensors (and hooks) as
the layer it stands in for and computes `onednn.linear(x, weight, bias)`, which equals
`F.linear(x, weight, bias)` (`tests/fast`). `LinearSwap` puts one in place of every
`nn.Linear` of a model and puts the originals back on `restore()`, so the parameters,
the optimizer's references to them and the `state_dict` never change.
"""

from __future__ import annotations

from torch import Tensor, nn

from stagegpt.fast import onednn


class OneDNNLinear(nn.Linear):
    """`nn.Linear` whose fp32 CPU products of many rows run in oneDNN."""

    @classmethod
    def sharing(cls, linear: nn.Linear) -> OneDNNLinear:
        """A stand-in for `linear` that shares its parameters, hooks and training flag."""
        fast = cls.__new__(cls)
        fast.__dict__.update(linear.__dict__)  # the same dicts of parameters and hooks
        return fast

    def forward(self, x: Tensor) -> Tensor:
        return onednn.linear(x, self.weight, self.bias)


class LinearSwap:
    """Every plain `nn.Linear` of `model` replaced by a `OneDNNLinear` until `restore()`."""

    def __init__(self, model: nn.Module):
        self.swapped: list[tuple[nn.Module, str, nn.Linear]] = []
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    setattr(parent, name, OneDNNLinear.sharing(child))
                    self.swapped.append((parent, name, child))

    def restore(self) -> None:
        for parent, name, original in reversed(self.swapped):
            original.train(getattr(parent, name).training)
            setattr(parent, name, original)
        self.swapped = []
