"""Look inside a model: parameter counts per component and FLOPs per token.

The ladder and `stagegpt inspect` report the same numbers from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from stagegpt.layers import MultiHeadAttention
from stagegpt.models import LanguageModel

COMPONENTS = ("embeddings", "attention", "mlp", "norms", "head")


def component_of(name: str) -> str:
    if name.startswith(("wte", "wpe")):
        return "embeddings"
    if ".attn." in name or name.startswith("attn."):
        return "attention"
    if ".mlp." in name:
        return "mlp"
    if name.startswith("lm_head"):
        return "head"
    return "norms"


def parameter_counts(model: LanguageModel) -> dict[str, int]:
    """Parameters per component; the tied head is counted once (under embeddings)."""
    counts = dict.fromkeys(COMPONENTS, 0)
    for name, param in model.named_parameters():  # named_parameters skips tied aliases
        counts[component_of(name)] += param.numel()
    counts["total"] = sum(counts[c] for c in COMPONENTS)
    return counts


def flops_per_token(model: LanguageModel, seq_len: int | None = None) -> dict[str, int]:
    """Matmul FLOPs per token: 2 per multiply-add, training = 3x forward (fwd + 2x bwd).

    Attention scores and the weighted sum each cost 2*T*C per token per layer for a
    context of T (counted over the full window, as the usual 6N + 12*L*T*C estimate does).
    """
    T = seq_len or model.config.block_size
    forward = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            forward += 2 * module.in_features * module.out_features
        elif isinstance(module, MultiHeadAttention):
            forward += 2 * 2 * T * module.c_proj.in_features
    return {"forward": forward, "train": 3 * forward}


@dataclass
class TraceRow:
    module: str
    operation: str
    shape: tuple[int, ...]
    dtype: str
    params: int


def trace_shapes(model: LanguageModel, idx: Tensor) -> list[TraceRow]:
    """Run one forward pass and record every module's output, in the order they ran.

    Composite modules (a block, an attention layer) are recorded when they finish, after
    the layers inside them. `params` counts each module's own parameters, not its children's.
    """
    rows: list[TraceRow] = []
    seen: set[int] = set()

    def own_params(module: nn.Module) -> int:
        total = 0
        for p in module.parameters(recurse=False):
            if id(p) not in seen:  # the tied head shares wte's tensor: count it once
                seen.add(id(p))
                total += p.numel()
        return total

    def record(name: str):
        def hook(module: nn.Module, _inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            rows.append(TraceRow(name, type(module).__name__, tuple(out.shape),
                                 str(out.dtype).removeprefix("torch."), own_params(module)))
        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            logits, _ = model(idx)
    finally:
        for h in handles:
            h.remove()
    rows.append(TraceRow("(model)", "logits", tuple(logits.shape),
                         str(logits.dtype).removeprefix("torch."), 0))
    return rows


def format_trace(rows: list[TraceRow]) -> str:
    header = f"{'module':<22} {'operation':<20} {'output shape':<18} {'dtype':<9} {'params':>12}"
    lines = [header, "-" * len(header)]
    for r in rows:
        shape = "(" + ", ".join(map(str, r.shape)) + ")"
        lines.append(f"{r.module:<22} {r.operation:<20} {shape:<18} {r.dtype:<9} {r.params:>12,}")
    return "\n".join(lines)
