"""Module swaps: some layers of a model replaced by stand-ins that compute the same function.

A stand-in is an instance of a subclass of the layer's own class that shares the layer's
`__dict__` entries: the very same parameter tensors, buffers and hook dicts. So the
parameters, the optimizer's references to them, the `state_dict` and the hooks never
change; only `forward` does. `ModuleSwap` puts the stand-ins in place and the originals
back on `restore()`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

M = TypeVar("M", bound=nn.Module)


def sharing(cls: type[M], layer: nn.Module) -> M:
    """An instance of `cls` (a subclass of type(layer)) sharing layer's parameters and hooks."""
    stand_in = cls.__new__(cls)
    stand_in.__dict__.update(layer.__dict__)  # the same dicts of parameters and hooks
    return stand_in


class ModuleSwap:
    """Every submodule of `model` for which `stand_in(module)` gives a module replaced by
    it, until `restore()`."""

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
            original.train(getattr(parent, name).training)  # `training` was copied, not shared
            setattr(parent, name, original)
        self.swapped = []
