"""Look inside a model: every tensor transformation of one forward pass (the shape trace,
`tools/shape_trace.py`), parameter counts per component and FLOPs per token.

The ladder and `stagegpt inspect` report the same numbers from here. `inspect_model`
returns them as data (an `Inspection`); `format_inspection` turns that into the table the
CLI prints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stagegpt.errors import StagegptError
from stagegpt.interop import load_checkpoint
from stagegpt.limits import check_fits
from stagegpt.model import ModelConfig
from stagegpt.model.layers import (
    MultiHeadAttention,
    attention_layers,
)
from stagegpt.model.stages import LanguageModel
from stagegpt.tools.shape_trace import TraceRow, format_trace, trace_shapes
from stagegpt.train.checkpoints import meta_model
from stagegpt.values import is_int

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


def kv_cache_bytes_per_token(model: LanguageModel) -> int:
    """What decoding caches per token: keys and values of every attention layer (0 for
    stages without attention). Built on the meta device, so it costs no memory."""
    caches = model.make_kv_cache(1, device="meta", dtype=next(model.parameters()).dtype)
    if not caches:
        return 0
    per_position = sum(c.k[0, :, 0].numel() + c.v[0, :, 0].numel() for c in caches)
    return per_position * caches[0].k.element_size()


# ---------------------------------------------------------------------------------------
# Everything at once


@dataclass
class Inspection:
    """What `stagegpt inspect` prints, as data."""

    stage: int
    config: ModelConfig
    batch: int
    seq: int
    trace: list[TraceRow]
    params: dict[str, int]
    flops: dict[str, int]  # per token, over a context of `flops_context` tokens
    flops_context: int
    model_class: str = ""
    attention_layers: int = 0  # as built: stages 1-2 have none, stages 3-4 one head each
    n_head: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["config"] = self.config.to_dict()
        return data


def model_to_inspect(stage: int | None, preset: str | None = None,
                     ckpt: str | Path | None = None) -> LanguageModel:
    """The model to inspect: from a checkpoint, or a preset's shape on the meta device
    (shapes only: nothing allocated, nothing computed, so even gpt2-xl takes seconds)."""
    if ckpt is not None:
        model = load_checkpoint(ckpt).model
        if stage is not None and stage != model.stage:
            raise StagegptError(f"stage {stage} does not match the checkpoint {ckpt}, which "
                                f"holds stage {model.stage}; leave stage out or fix it", "stage")
        return model
    if stage is None:
        raise StagegptError("stage is needed to build a model from a preset (or give a "
                            "checkpoint)", "stage")
    return meta_model(stage, ModelConfig.from_preset(preset or "small"))


MAX_BATCH = 1 << 20  # a trace on the meta device has no memory to check; this bounds it


def inspect_model(model: LanguageModel, batch: int = 1, seq: int = 8,
                  flops_context: int | None = None) -> Inspection:
    """Trace one forward pass of a (batch, seq) input and count parameters and FLOPs.

    FLOPs are per token over `flops_context` tokens (default: the model's block_size,
    which is what the ladder reports). The model may live on the meta device.
    """
    config = model.config
    if not is_int(batch) or not 1 <= batch <= MAX_BATCH:
        raise StagegptError(f"batch must be an integer from 1 to {MAX_BATCH:,}, got "
                            f"{batch!r:.40}", "batch")
    if not is_int(seq) or not 1 <= seq <= config.block_size:
        raise StagegptError(f"seq must be between 1 and block_size {config.block_size}, "
                            f"got {seq!r:.40}", "seq")
    if flops_context is not None and (not is_int(flops_context) or flops_context < 1):
        raise StagegptError(f"flops_context must be a positive integer or None, got "
                            f"{flops_context!r:.40}", "flops_context")
    device = next(model.parameters()).device
    if device.type != "meta":  # a real forward pass: its activations must fit
        width = config.vocab_size + 16 * config.n_embd * (config.n_layer + 1) + 4 * seq
        check_fits(4 * batch * seq * width, f"tracing a ({batch}, {seq}) input",
                   "use a smaller batch", "batch")
    idx = torch.arange(batch * seq, device=device).view(batch, seq) % config.vocab_size
    context = flops_context or config.block_size
    layers = attention_layers(model)
    return Inspection(stage=model.stage, config=config, batch=batch, seq=seq,
                      trace=trace_shapes(model, idx), params=parameter_counts(model),
                      flops=flops_per_token(model, context), flops_context=context,
                      model_class=type(model).__name__, attention_layers=len(layers),
                      n_head=layers[0].n_head if layers else 0)


def format_inspection(ins: Inspection) -> str:
    c = ins.config
    attention = "no attention"
    if ins.attention_layers:
        heads = "head" if ins.n_head == 1 else "heads"
        attention = f"{ins.attention_layers} attention layer(s) x {ins.n_head} {heads}"
    head = (f"stage {ins.stage} ({ins.model_class}): vocab {c.vocab_size:,}, block_size "
            f"{c.block_size}, n_embd {c.n_embd}, {attention}; "
            f"input (B, T) = ({ins.batch}, {ins.seq})")
    total = ins.params["total"]
    params = ["parameters (tied weights counted once):"]
    for name in COMPONENTS:
        share = ins.params[name] / total if total else 0.0
        params.append(f"  {name:<11} {ins.params[name]:>15,}  {share:7.2%}")
    params.append(f"  {'total':<11} {total:>15,}")
    flops = [f"FLOPs per token (matmuls, context {ins.flops_context}):",
             f"  {'forward':<11} {ins.flops['forward']:>15,}",
             f"  {'training':<11} {ins.flops['train']:>15,}  (3x forward: fwd + 2x bwd)"]
    return "\n\n".join([head, format_trace(ins.trace), "\n".join(params), "\n".join(flops)])
