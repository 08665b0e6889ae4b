"""Module swaps: layers of the model replaced by stand-ins that compute the same, faster.

A stand-in is an instance of a subclass of the layer's own class that holds the very same
parameter tensors, buffers and hooks (`share`): `OneDNNLinear` computes `F.linear` with
its products in oneDNN. `ModuleSwap` puts one in place of every layer a rule picks and
puts the originals back on `restore()`, so the parameters, the optimizer's references to
them and the `state_dict` never change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import Tensor, nn

from stagegpt.fast import onednn

M = TypeVar("M", bound=nn.Module)


def share(cls: type[M], module: nn.Module) -> M:
    """An instance of `cls` sharing `module`'s parameters, buffers, hooks and training flag."""
    stand_in = cls.__new__(cls)
    stand_in.__dict__.update(module.__dict__)  # the same dicts, not copies
    return stand_in


class OneDNNLinear(nn.Linear):
    """`nn.Linear` whose fp32 CPU products of many rows run in oneDNN."""

    def forward(self, x: Tensor) -> Tensor:
        return onednn.linear(x, self.weight, self.bias)


class ModuleSwap:
    """Every submodule of `model` for which `stand_in` returns a module replaced by it,
    until `restore()`."""

    def __init__(self, model: nn.Module, stand_in: Callable[[nn.Module], nn.Module | None]):
        self.swapped: list[tuple[nn.Module, str, nn.Module]] = []
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                fast = stand_in(child)
                if fast is not None:
                    setattr(parent, name, fast)
                    self.swapped.append((parent, name, child))

    def restore(self) -> None:
        for parent, name, original in reversed(self.swapped):
            original.train(getattr(parent, name).training)
            setattr(parent, name, original)
        self.swapped = []
