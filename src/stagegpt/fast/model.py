"""`accelerate(model)`: the same model, computing faster on a CPU.

A `FastModel` wraps a plain `LanguageModel` and changes how it computes, never what:

- on a CPU where oneDNN's products beat the default BLAS (`onednn.preferred()`), its
  `nn.Linear` layers are swapped for `OneDNNLinear`s holding the same parameters
  (`stagegpt.fast.linear`), and where PyTorch's tanh is slow (`activation.pays()`) its
  tanh GELUs for `SigmoidGELU`s (`stagegpt.fast.activation`); `close()` puts them back;
- given targets, `fast(x, y)` (or `fast.loss(x, y)`) runs the head and the cross-entropy
  chunk by chunk without ever holding the (B*T, V) logits (`stagegpt.fast.loss`), in a
  workspace the `FastModel` owns, and returns (None, loss): a training loop written for
  the plain model (`_, loss = model(x, y)`) gets the fast loss as it is. Ask for the
  logits with `return_logits=True`.

Its parameters, `state_dict` and outputs are the plain model's (`tests/fast`). Use it as
a context manager, or call `close()` when done:

    with accelerate(model) as fast:
        loss = fast.loss(x, y)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from stagegpt.fast import activation, onednn
from stagegpt.fast.activation import SigmoidGELU
from stagegpt.fast.linear import OneDNNLinear
from stagegpt.fast.loss import Workspace, chunked_cross_entropy
from stagegpt.fast.swap import ModuleSwap, sharing
from stagegpt.model.stages import LanguageModel


def stand_in(layer: nn.Module) -> nn.Module | None:
    """The faster stand-in for `layer` on this CPU, or None to keep it."""
    if type(layer) is nn.Linear and onednn.preferred():
        return sharing(OneDNNLinear, layer)
    if activation.replaces(layer):
        return sharing(SigmoidGELU, layer)
    return None


class FastModel(nn.Module):
    """`model` with the chunked head + loss (and the stand-ins where they pay), until
    `close()`."""

    def __init__(self, model: LanguageModel):
        super().__init__()
        self.model = model
        self.workspace = Workspace()
        self.swap: ModuleSwap | None = ModuleSwap(model, stand_in)
        self.head_loss = chunked_cross_entropy

    def forward(self, idx: Tensor, targets: Tensor | None = None,
                return_logits: bool = False) -> tuple[Tensor | None, Tensor | None]:
        """The plain model's (logits, loss). With targets, the loss alone unless
        `return_logits`: computed without the full logits, and (None, loss) returned."""
        if targets is None or return_logits:
            return self.model(idx, targets)
        self.model.check_length(idx)
        hidden = self.model.body(idx)  # (B, T, C)
        head = self.model.lm_head
        loss = self.head_loss(hidden.flatten(0, 1), head.weight, head.bias,
                              targets.flatten(), workspace=self.workspace)
        return None, loss

    def loss(self, idx: Tensor, targets: Tensor) -> Tensor:
        return self(idx, targets)[1]

    def compiled(self) -> nn.Module:
        """`torch.compile(self)`, the chunked head + loss left out of the graph (it is
        hand-scheduled already and runs eagerly inside the compiled model). Marked here,
        not where it is defined: importing torch._dynamo costs over a second of start-up."""
        self.head_loss = torch.compiler.disable(chunked_cross_entropy)
        return torch.compile(self)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.model.state_dict(*args, **kwargs)  # the plain model's keys

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.load_state_dict(*args, **kwargs)

    def close(self) -> None:
        """Put the plain layers back and free the workspace (the model keeps its values)."""
        if self.swap is not None:
            self.swap.restore()
            self.swap = None
        self.workspace.clear()

    def __enter__(self) -> FastModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def accelerate(model: LanguageModel) -> FastModel:
    """`model`, computing faster (see the module docstring); `close()` it when done."""
    return FastModel(model)
