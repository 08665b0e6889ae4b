"""Every tensor transformation of one forward pass, in order: the table at the top of
`stagegpt inspect`.

How the trace sees everything: forward hooks record each module's output, and a
`TorchFunctionMode` records every torch operation that runs *between* modules (the
embedding sum, the residual additions, and inside attention the q/k/v split, the heads,
the scores, the mask, the softmax and the merge). Only operations on tensors computed from
the input are recorded, so bookkeeping such as building the causal mask stays out of the
table. None of this is active outside `trace_shapes`: the normal forward is untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from stagegpt.model.layers import (
    MultiHeadAttention,
    RotaryAttention,
    SwiGLU,
    TransformerBlock,
    eval_mode,
    explicit_attention,
)
from stagegpt.model.stages import LanguageModel


@dataclass
class TraceRow:
    module: str
    operation: str
    shape: tuple[int, ...]
    dtype: str
    params: int
    note: str = ""


# What each step inside attention means, in the order `MultiHeadAttention.forward` and
# `reference_attention` run them (the n-th op of a kind gets the n-th note).
ATTENTION_NOTES = {
    "split": ["q, k, v from one c_attn output (3 tensors)"],
    "view": ["q: split into heads", "k: split into heads", "v: split into heads"],
    "transpose": ["q: heads first (B, nh, T, hd)", "k: heads first (B, nh, T, hd)",
                  "v: heads first (B, nh, T, hd)", "k transposed for q @ k^T",
                  "heads back (B, T, nh, hd)"],
    "matmul": ["scores = q @ k^T", "weighted sum of values: weights @ v"],
    "div": ["scale scores by 1/sqrt(hd)"],
    "masked_fill": ["causal mask: -inf above the diagonal"],
    "reshape": ["merge heads: (B, T, C)"],
}
# Stage 9 keeps n_kv_head key/value heads until it repeats them; stages 7-9 turn q and k.
GQA_NOTES = {**ATTENTION_NOTES, "transpose": [
    "q: heads first (B, nh, T, hd)", *[f"{t}: key/value heads first (B, nkv, T, hd)"
                                       for t in "kv"], *ATTENTION_NOTES["transpose"][3:]],
    "repeat_interleave": [f"{t}: each key/value head serves nh / nkv query heads" for t in "kv"]}
ROTARY_NOTES = {"mul": [f"rotary: {m}" for t in "qk" for m in (f"{t} * cos(angle)",
                                                                f"rotate_half({t}) * sin(angle)")],
                "chunk": [f"rotate_half: {t}'s two halves (x1, x2)" for t in "qk"],
                "cat": [f"rotate_half({t}) = (-x2, x1)" for t in "qk"],
                "add": [f"{t} turned by its position" for t in "qk"]}
SWIGLU_NOTES = {"silu": ["gates through SiLU"], "mul": ["gate x value, per hidden unit"]}
BLOCK_NOTES = {"add": ["residual: x + attn(ln_1(x))", "residual: x + mlp(ln_2(x))"]}
MODEL_NOTES = {"add": ["token + position embeddings"]}
MODULE_NOTES = {"wte": "token embeddings", "wpe": "position embeddings",
                "softmax": "attention weights: each row sums to 1",
                "c_attn": "q, k, v for all heads in one matmul", "c_fc": "widen to 4C",
                "lm_head": "logits"}
OP_NAMES = {"__getitem__": "index", "true_divide": "div"}


def _dtype(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _arg_text(value: Any) -> str | None:
    """Non-tensor arguments as written in code; tensors are left out of the op's name."""
    if isinstance(value, bool | int | str):
        return repr(value) if isinstance(value, str) else str(value)
    if isinstance(value, float):
        return "-inf" if value == -math.inf else "inf" if value == math.inf else f"{value:g}"
    if isinstance(value, tuple | list | torch.Size):
        parts = [_arg_text(v) for v in value]
        return None if None in parts else "(" + ", ".join(parts) + ")"
    return None


def _op_text(name: str, args: tuple, kwargs: dict) -> str:
    parts = [t for t in map(_arg_text, args) if t is not None]
    parts += [f"{k}={t}" for k, v in kwargs.items() if (t := _arg_text(v)) is not None]
    return f"{name}({', '.join(parts)})" if parts else name


class _Tracer(TorchFunctionMode):
    """Records modules (through hooks) and the torch ops between them, in execution order."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.rows: list[TraceRow] = []
        self.derived: dict[int, Tensor] = {}  # tensors computed from the input, kept alive
        self.stack: list[tuple[str, nn.Module]] = []
        self.leaf_depth = 0
        self.counts: dict[tuple[str, str], int] = {}
        self.seen_params: set[int] = set()
        self.quiet = False

    def mark(self, value: Any) -> None:
        for t in value if isinstance(value, tuple | list) else (value,):
            if isinstance(t, Tensor):
                self.derived[id(t)] = t

    def is_derived(self, value: Any) -> bool:
        if isinstance(value, tuple | list):
            return any(self.is_derived(v) for v in value)
        return isinstance(value, Tensor) and id(value) in self.derived

    def own_params(self, module: nn.Module) -> int:
        total = 0
        for p in module.parameters(recurse=False):
            if id(p) not in self.seen_params:  # the tied head shares wte's tensor
                self.seen_params.add(id(p))
                total += p.numel()
        return total

    def note_for(self, name: str, module: nn.Module, op: str) -> str:
        if isinstance(module, MultiHeadAttention):
            notes = GQA_NOTES if module.n_kv_head < module.n_head else ATTENTION_NOTES
            if isinstance(module, RotaryAttention):
                notes = {**notes, **ROTARY_NOTES}
        elif isinstance(module, SwiGLU):
            notes = SWIGLU_NOTES
        elif isinstance(module, TransformerBlock):
            notes = BLOCK_NOTES
        elif isinstance(module, LanguageModel):
            notes = MODEL_NOTES
        else:
            return ""
        n = self.counts[(name, op)] = self.counts.get((name, op), -1) + 1
        options = notes.get(op, [])
        return options[n] if n < len(options) else ""

    # hooks -------------------------------------------------------------------------------

    def pre_hook(self, name: str):
        def hook(module: nn.Module, _inputs) -> None:
            self.stack.append((name, module))
            if not any(True for _ in module.children()):
                self.leaf_depth += 1
        return hook

    def post_hook(self, name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            self.stack.pop()
            if not any(True for _ in module.children()):
                self.leaf_depth -= 1
            if not name:
                return
            out = output[0] if isinstance(output, tuple) else output
            if self.is_derived(inputs):
                self.mark(out)
            self.quiet = True
            try:
                note = MODULE_NOTES.get(name.rsplit(".", 1)[-1], "")
                if name.endswith("mlp.c_proj"):
                    note = "project back to C"
                elif name.endswith(("mlp.c_fc", "mlp.c_gate")) and isinstance(
                        self.model.get_submodule(name.rsplit(".", 1)[0]), SwiGLU):
                    note = f"{'values' if name.endswith('c_fc') else 'gates'}: widen to hidden"
                elif name == "ln_f":
                    note = f"final {type(module).__name__}"
                elif name == "lm_head" and module.weight is getattr(self.model, "wte", None).weight:
                    note = "logits; the weight is wte's (tied, counted once)"
                elif isinstance(module, MultiHeadAttention):
                    note = f"attention output ({module.n_head} head"
                    note += "s)" if module.n_head > 1 else ")"
                self.rows.append(TraceRow(name, type(module).__name__, tuple(out.shape),
                                          _dtype(out), self.own_params(module), note))
            finally:
                self.quiet = False
        return hook

    # torch ops between modules -----------------------------------------------------------

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.quiet or self.leaf_depth or not self.stack:
            return out
        if not (self.is_derived(args) or self.is_derived(list(kwargs.values()))):
            return out
        outputs = out if isinstance(out, tuple | list) else (out,)
        if not outputs or not all(isinstance(t, Tensor) for t in outputs):
            return out
        self.mark(out)
        name = getattr(func, "__name__", str(func))
        name = OP_NAMES.get(name, name.strip("_"))
        module_name, module = self.stack[-1]
        text = _op_text(name, args, kwargs)
        if len(outputs) > 1:
            text += f" -> {len(outputs)} tensors"
        self.quiet = True
        try:
            self.rows.append(TraceRow(module_name or "(model)", text, tuple(outputs[0].shape),
                                      _dtype(outputs[0]), 0,
                                      self.note_for(module_name, module, name)))
        finally:
            self.quiet = False
        return out


def trace_shapes(model: LanguageModel, idx: Tensor) -> list[TraceRow]:
    """Run one forward pass of `idx` (B, T) and record every tensor transformation in order.

    Modules are recorded when they finish; composite ones (a block, an attention layer)
    after the steps inside them. `params` counts each module's own parameters, not its
    children's, and the tied head's weight once, so the column sums to the model's total.
    Attention runs its explicit path here (`explicit_attention`) so the scores and the
    softmax weights exist to be shown. A model on the meta device traces without computing
    anything (shapes only), which is how large presets are traced cheaply.
    """
    tracer = _Tracer(model)
    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(tracer.pre_hook(name)))
        handles.append(module.register_forward_hook(tracer.post_hook(name)))
    try:
        tracer.mark(idx)
        with eval_mode(model), explicit_attention(model), torch.no_grad(), tracer:
            logits, _ = model(idx)
    finally:
        for h in handles:
            h.remove()
    tracer.rows.append(TraceRow("(model)", "logits", tuple(logits.shape), _dtype(logits), 0,
                                "(B, T, V): a score for every next token"))
    return tracer.rows


def format_trace(rows: list[TraceRow]) -> str:
    table = [("module", "operation", "output shape", "dtype", "params", "note")]
    for r in rows:
        shape = "(" + ", ".join(map(str, r.shape)) + ")"
        table.append((r.module, r.operation, shape, r.dtype, f"{r.params:,}", r.note))
    widths = [max(len(row[i]) for row in table) for i in range(6)]
    lines = []
    for i, row in enumerate(table):
        cells = [row[j].ljust(widths[j]) if j != 4 else row[j].rjust(widths[j])
                 for j in range(6)]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)
