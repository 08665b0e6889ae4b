"""LoRA: low-rank adapters attached to a plain model's linear layers from outside.

A frozen linear layer y = x W^T + b gets a trainable low-rank update:

    y = x W^T + b + (alpha / r) * x A^T B^T        A: (r, in), B: (out, r)

A starts small and random, B at zero, so the adapted model starts exactly equal to the
base; only A and B (r * (in + out) numbers per layer) learn. `merge_lora` folds
(alpha / r) * B @ A into W and puts the plain `nn.Linear` back, so the merged model has
the plain model's state-dict keys and computes the adapted model's function.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from stagegpt.errors import StagegptError

# The linear layers of the blocks (model/layers.py): attention's q,k,v and output
# projections, the MLP's up and down projections, and SwiGLU's gate (stages 8-9).
TARGETS = ("c_attn", "c_proj", "c_fc", "c_gate")
DEFAULT_TARGETS = ("c_attn", "c_proj", "c_fc")
MAX_RANK = 4096
MAX_ALPHA = 1e6  # common choices are r to 2 r; far beyond this the update only overflows


@dataclass(frozen=True)
class LoRAConfig:
    """rank r, alpha (the update is scaled by alpha / r), and the layer names adapted."""

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = DEFAULT_TARGETS

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or not (
                1 <= self.rank <= MAX_RANK):
            raise StagegptError(f"rank must be an integer from 1 to {MAX_RANK}, got "
                                f"{self.rank!r}", "rank")
        if (not isinstance(self.alpha, int | float) or isinstance(self.alpha, bool)
                or not 0 < self.alpha <= MAX_ALPHA):  # NaN fails too
            raise StagegptError(f"alpha must be a number > 0 and at most {MAX_ALPHA:,.0f}, got "
                                f"{self.alpha!r}", "alpha")
        if isinstance(self.targets, str) or not isinstance(self.targets, tuple | list):
            raise StagegptError(f"targets must be a list of layer names, got "
                                f"{type(self.targets).__name__}", "targets")
        object.__setattr__(self, "targets", tuple(self.targets))  # equal to a saved config's
        if not self.targets or not all(isinstance(t, str) for t in self.targets):
            raise StagegptError("targets must name at least one layer, e.g. c_attn,c_proj,c_fc",
                                "targets")
        unknown = [t for t in self.targets if t.rpartition(".")[2] not in TARGETS]
        if unknown:
            raise StagegptError(f"targets: unknown layer {unknown[0]!r}; choose from "
                                f"{', '.join(TARGETS)} (optionally as attn.c_proj or "
                                "mlp.c_proj)", "targets")
        repeated = [t for i, t in enumerate(self.targets) if t in self.targets[:i]]
        if repeated:  # a resume compares targets as written
            raise StagegptError(f"targets: {repeated[0]!r} is named twice; name each layer "
                                "once", "targets")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        return {**asdict(self), "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, data: dict) -> LoRAConfig:
        if not isinstance(data, dict) or set(data) != {"rank", "alpha", "targets"}:
            raise StagegptError("lora.json must hold exactly rank, alpha and targets")
        targets = data["targets"]
        if not isinstance(targets, list):
            raise StagegptError("lora.json: targets must be a list of layer names")
        return cls(data["rank"], data["alpha"], tuple(targets))


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` (`base`) plus the trainable low-rank update B @ A."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise StagegptError(f"base must be an nn.Linear, got {type(base).__name__}", "base")
        LoRAConfig(rank, alpha)  # rank and alpha checked as LoRAConfig checks them
        self.base = base
        self.base.requires_grad_(False)
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))  # (out, r): starts 0
        # Kaiming-uniform like nn.Linear's own init: x A^T has a sensible scale from step 1.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        update = (x @ self.lora_A.T) @ self.lora_B.T  # (..., in) -> (..., r) -> (..., out)
        return self.base(x) + self.scaling * update

    def merged(self) -> nn.Linear:
        """The plain linear layer computing this one's function: W + scaling * B @ A."""
        with torch.no_grad():
            self.base.weight += self.scaling * (self.lora_B @ self.lora_A)  # (out, in)
        return self.base


def _matches(name: str, targets: tuple[str, ...]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def _target_names(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and _matches(n, targets)]


def unmatched_targets(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """The targets that name none of `model`'s linear layers."""
    names = _target_names(model, targets)
    return [t for t in targets if not any(_matches(n, (t,)) for n in names)]


def check_targets(model: nn.Module, config: LoRAConfig) -> None:
    """Refuse a config whose targets name a layer `model` lacks."""
    unmatched = unmatched_targets(model, config.targets)
    if unmatched:
        raise StagegptError(f"targets: this model has no {unmatched[0]!r} layer (stages "
                            "1-2 have no attention, 1-3 no MLP, only 8-9 have c_gate)",
                            "targets")


def attach_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Freeze `model` and wrap each target linear layer in a LoRALinear; return their names.

    The model's own code is untouched: its submodules are swapped from outside.
    """
    if not isinstance(config, LoRAConfig):
        raise StagegptError(f"config must be a LoRAConfig, e.g. LoRAConfig(rank=8), got "
                            f"{type(config).__name__}", "config")
    check_targets(model, config)
    model.requires_grad_(False)
    names = _target_names(model, config.targets)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), config.rank, config.alpha))
    return names


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def adapter_state(model: nn.Module) -> dict[str, Tensor]:
    """Only the adapters' tensors: {'<layer>.lora_A': (r, in), '<layer>.lora_B': (out, r)}."""
    state = {}
    for name, layer in lora_layers(model).items():
        state[f"{name}.lora_A"] = layer.lora_A.detach().contiguous()
        state[f"{name}.lora_B"] = layer.lora_B.detach().contiguous()
    return state


def load_adapter_state(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Copy saved adapters into a model with LoRA attached, names and shapes checked."""
    ours = adapter_state(model)
    if set(state) != set(ours):
        missing = sorted(set(ours) - set(state))[:2]
        extra = sorted(set(state) - set(ours))[:2]
        raise StagegptError(f"{source} does not fit this model's adapters (missing {missing}, "
                            f"unexpected {extra}); was it written for another base or targets?")
    for key, tensor in state.items():
        if tensor.shape != ours[key].shape:
            raise StagegptError(f"{source}: {key} has shape {tuple(tensor.shape)}, the "
                                f"adapters need {tuple(ours[key].shape)}")
        if tensor.dtype != ours[key].dtype:
            raise StagegptError(f"{source}: {key} holds {_dtype_name(tensor)} values, the "
                                f"adapters need {_dtype_name(ours[key])}; the file is damaged "
                                "or was not written by stagegpt")
    layers = lora_layers(model)
    with torch.no_grad():
        for key, tensor in state.items():
            name, _, part = key.rpartition(".")
            getattr(layers[name], part).copy_(tensor)


def _dtype_name(tensor: Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and restore the plain `nn.Linear` layers;
    a weight that would not be finite is refused (naming its layer)."""
    for name, layer in lora_layers(model).items():
        parent_name, _, child = name.rpartition(".")
        merged = layer.merged()
        if not torch.isfinite(merged.weight).all():
            raise StagegptError(f"folding the adapters of {name} into its weight gives NaN or "
                                f"infinite values (alpha / rank is {layer.scaling:g})")
        setattr(model.get_submodule(parent_name), child, merged)
    return model


def trainable_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
