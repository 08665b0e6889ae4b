"""Hugging Face / OpenAI GPT-2 checkpoints into stage 5, and stage 5 back out.

Stage 5 (`GPT`) is GPT-2 module for module, under GPT-2's own names, so converting is
renaming and transposing; no value is ever changed.

    Hugging Face GPT2LMHeadModel                  stagegpt GPT (stage 5)
    transformer.wte.weight            (V, C)      wte.weight (lm_head.weight is this tensor)
    transformer.wpe.weight            (T, C)      wpe.weight
    transformer.h.{i}.ln_1.*, ln_2.*              h.{i}.ln_1.*, ln_2.*
    transformer.h.{i}.attn.c_attn.weight (C, 3C)  h.{i}.attn.c_attn.weight (3C, C)  transposed
    transformer.h.{i}.attn.c_proj.weight (C, C)   h.{i}.attn.c_proj.weight (C, C)   transposed
    transformer.h.{i}.mlp.c_fc.weight   (C, 4C)   h.{i}.mlp.c_fc.weight   (4C, C)   transposed
    transformer.h.{i}.mlp.c_proj.weight (4C, C)   h.{i}.mlp.c_proj.weight (C, 4C)   transposed
    transformer.ln_f.*                            ln_f.*
    lm_head.weight (usually absent: tied)         -

GPT-2 computes those four projections with `Conv1D`, a linear layer that stores its weight
as (in, out); `nn.Linear` stores (out, in). Old `pytorch_model.bin` files keep each layer's
causal-mask buffers (`attn.bias`, `attn.masked_bias`) and omit the `transformer.` prefix;
the buffers hold nothing learned and are skipped. Pickled weights are read with
`torch.load(weights_only=True)`, which refuses any file that would run code.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from stagegpt.data.tokenizers import GPT2_EOT_ID, get_tokenizer, gpt2_encoding
from stagegpt.errors import StagegptError
from stagegpt.fileio import atomic_dir, check_replaceable, read_json, write_json
from stagegpt.model.config import GPT2_VOCAB, ModelConfig
from stagegpt.model.stages import GPT, LanguageModel
from stagegpt.train.checkpoints import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    check_weight_tensors,
    empty_model,
    load_weights_into,
    read_weights,
    unique_weights,
    write_safetensors,
)

SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_FILE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PREFIX = "transformer."
CONV1D = re.compile(r"^h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")
MASK_BUFFER = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")  # the same function; stagegpt's nn.GELU("tanh")
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which every stagegpt LayerNorm uses

# Config switches that change GPT-2's computation, with the value stage 5 computes.
FIXED = {
    "layer_norm_epsilon": LAYER_NORM_EPS,
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "add_cross_attention": False,
}


# ModelConfig's fields that GPT-2's config.json calls by other names
GPT2_KEYS = {"block_size": "n_positions", "dropout": "resid_pdrop"}


def model_config_from(source: Path, keys: dict[str, str], **fields: Any) -> ModelConfig:
    """ModelConfig(**fields) from a Hugging Face config.json, whose errors name the file's
    own keys (`keys` maps ModelConfig's field names to them): `n_positions`, not
    `block_size`."""
    try:
        return ModelConfig(**fields)
    except (StagegptError, TypeError, ValueError) as err:
        names = re.compile(r"\b(" + "|".join(map(re.escape, keys)) + r")\b")
        message = names.sub(lambda m: keys[m.group(1)], str(err)) if keys else str(err)
        raise StagegptError(f"{source}: {message}") from None


def config_from_hf(hf: Any, source: Path) -> ModelConfig:
    """Map a GPT2Config dict onto ModelConfig, refusing variants stage 5 does not compute.

    Missing keys take GPT2Config's defaults, as transformers does. Stage 5 has one dropout
    rate where GPT-2 has three; it takes `resid_pdrop`.
    """
    if not isinstance(hf, dict) or hf.get("model_type") != "gpt2":
        kind = hf.get("model_type") if isinstance(hf, dict) else None
        raise StagegptError(
            f"{source} is not a Hugging Face GPT-2 config (model_type {kind!r}, expected "
            "'gpt2'); only GPT-2 checkpoints convert to stage 5"
        )
    activation = hf.get("activation_function", "gelu_new")
    if activation not in TANH_GELU:
        raise StagegptError(
            f"{source}: activation_function {activation!r} is not GPT-2's 'gelu_new' "
            "(tanh GELU); stage 5 cannot reproduce this model"
        )
    for key, value in FIXED.items():
        if hf.get(key, value) != value:
            raise StagegptError(
                f"{source}: {key} = {hf[key]!r} but stage 5 computes GPT-2's {key} = {value!r}; "
                "this GPT-2 variant cannot load into stage 5"
            )
    if hf.get("tie_word_embeddings", True) is not True:
        raise StagegptError(
            f"{source}: tie_word_embeddings is false, but stage 5's head is always the token "
            "embedding; this model cannot load into stage 5"
        )
    config = model_config_from(  # which checks every value, dropout too
        source, GPT2_KEYS, vocab_size=hf.get("vocab_size", GPT2_VOCAB),
        block_size=hf.get("n_positions", 1024), n_embd=hf.get("n_embd", 768),
        n_layer=hf.get("n_layer", 12), n_head=hf.get("n_head", 12),
        dropout=hf.get("resid_pdrop", 0.1), bias=True)
    if hf.get("n_inner") not in (None, 4 * config.n_embd):
        raise StagegptError(
            f"{source}: n_inner = {hf['n_inner']!r} but stage 5's MLP is 4 * n_embd wide; "
            "this GPT-2 variant cannot load into stage 5"
        )
    return config


def hf_config(config: ModelConfig) -> dict[str, Any]:
    """The config.json of a GPT2LMHeadModel with `config`'s shape."""
    gpt2_vocab = config.vocab_size == GPT2_VOCAB
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "use_cache": True,
        "bos_token_id": GPT2_EOT_ID if gpt2_vocab else None,
        "eos_token_id": GPT2_EOT_ID if gpt2_vocab else None,
        "tie_word_embeddings": True,
    }


def mask_buffer(key: str) -> bool:
    """An old GPT-2 file's causal-mask buffer (`attn.bias`, `attn.masked_bias`): nothing
    learned, and transformers 4.x stored `attn.bias` as uint8 or bool, not as a weight."""
    return MASK_BUFFER.match(key.removeprefix(PREFIX)) is not None


def read_pickled_weights(path: Path, skip: Callable[[str], bool] | None = None
                         ) -> dict[str, Tensor]:
    """A `pytorch_model.bin`, unpickled with `weights_only=True`: tensors in, never code.
    skip: names of tensors to leave out (buffers that hold nothing to load)."""
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any failure means "do not trust this file"
        if "weights only" in str(err).lower():
            reason = "it holds Python objects besides tensors, and unpickling them could run code"
        else:
            reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise StagegptError(
            f"refusing to load {path}: {reason}; use a model.safetensors from a trusted source"
        ) from None
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in weights.items()
    ):
        raise StagegptError(f"{path} is not a dict of named tensors; is it a GPT-2 checkpoint?")
    return check_weight_tensors({k: v for k, v in weights.items()
                                 if skip is None or not skip(k)}, path)


def _read_sharded(directory: Path, index: Path, read: Any) -> dict[str, Tensor]:
    """Weights split across the shard files an `*.index.json` names."""
    weight_map = read_json(index, "weights index")
    weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
    if not isinstance(weight_map, dict):
        raise StagegptError(f"{index} has no weight_map; the download may be incomplete")
    for shard in weight_map.values():
        if not isinstance(shard, str) or Path(shard).name != shard:
            raise StagegptError(f"{index} names shard {shard!r:.60}, not a file beside it in "
                                f"{directory}; refusing")
    weights: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        weights.update(read(directory / shard))
    return weights


def read_hf_weights(directory: Path, skip: Callable[[str], bool] | None = None
                    ) -> tuple[dict[str, Tensor], Path]:
    """The weights of a Hugging Face dir (but those named by `skip`) and the file they came
    from; safetensors first."""
    safetensors, pickled = partial(read_weights, skip=skip), partial(read_pickled_weights,
                                                                      skip=skip)
    if (directory / WEIGHTS_FILE).is_file():
        return safetensors(directory / WEIGHTS_FILE), directory / WEIGHTS_FILE
    if (directory / SAFETENSORS_INDEX).is_file():
        index = directory / SAFETENSORS_INDEX
        return _read_sharded(directory, index, safetensors), index
    if (directory / PICKLE_FILE).is_file():
        return pickled(directory / PICKLE_FILE), directory / PICKLE_FILE
    if (directory / PICKLE_INDEX).is_file():
        index = directory / PICKLE_INDEX
        return _read_sharded(directory, index, pickled), index
    raise StagegptError(
        f"{directory / WEIGHTS_FILE} is missing (and there is no {PICKLE_FILE}); "
        "download the model's weights into the directory beside its config.json"
    )


def weights_from_hf(hf_weights: dict[str, Tensor], model: LanguageModel,
                    source: Path) -> dict[str, Tensor]:
    """Rename and transpose Hugging Face GPT-2 weights to `model`'s state-dict names."""
    expected = {name: t.shape for name, t in unique_weights(model).items()}
    weights: dict[str, Tensor] = {}
    head, unexpected = None, []
    for key, tensor in hf_weights.items():
        name = key.removeprefix(PREFIX)
        if name == "lm_head.weight":
            head = tensor
            continue
        if mask_buffer(name):
            continue
        if name not in expected or name in weights:
            unexpected.append(key)
            continue
        conv1d = CONV1D.match(name) is not None
        need = expected[name][::-1] if conv1d else expected[name]  # Conv1D stores (in, out)
        if tensor.shape != need:
            raise StagegptError(
                f"{source}: {key} has shape {tuple(tensor.shape)} but config.json needs "
                f"{tuple(need)}; the weights and their config.json disagree"
            )
        weights[name] = tensor.t().contiguous() if conv1d else tensor
    missing = sorted(PREFIX + name for name in set(expected) - set(weights))
    if missing or unexpected:
        raise StagegptError(
            f"{source} does not match a GPT-2 of its config.json: missing {missing[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}; is it a complete GPT2LMHeadModel?"
        )
    if head is not None and not torch.equal(head, weights["wte.weight"]):
        raise StagegptError(
            f"{source}: lm_head.weight differs from transformer.wte.weight, but stage 5's "
            "head is always the token embedding; this untied model cannot load into stage 5"
        )
    return weights


def weights_to_hf(model: LanguageModel) -> dict[str, Tensor]:
    """`model`'s weights under GPT2LMHeadModel's names and layouts (the tied head omitted).

    GPT-2 always has biases; a `bias=False` model gets zero biases, which change no output.
    """
    weights = {}
    for name, tensor in unique_weights(model).items():
        tensor = tensor.detach().cpu()
        weights[PREFIX + name] = tensor.t().contiguous() if CONV1D.match(name) else tensor
    for key, tensor in list(weights.items()):
        if key.endswith(".weight") and not key.endswith(("wte.weight", "wpe.weight")):
            bias = key.removesuffix("weight") + "bias"
            weights.setdefault(bias, torch.zeros(tensor.shape[-1], dtype=tensor.dtype))  # (out,)
    return weights


def save_hf_dir(directory: str | Path, model: LanguageModel, overwrite: bool = False) -> Path:
    """Write `model` (stage 5) as a Hugging Face GPT-2 dir in one atomic step (an existing
    `directory` is replaced only with `overwrite=True`)."""
    check_replaceable(directory, overwrite)
    if model.stage != GPT.stage:
        raise StagegptError(
            f"only stage 5 (GPT) has GPT-2's architecture; this checkpoint is stage "
            f"{model.stage}, which Hugging Face GPT-2 cannot load"
        )
    return write_hf_dir(directory, hf_config(model.config), weights_to_hf(model))


def write_hf_dir(directory: str | Path, config: dict[str, Any],
                 weights: dict[str, Tensor]) -> Path:
    """A Hugging Face model dir (config.json, model.safetensors), written in one atomic step."""
    with atomic_dir(directory) as tmp:
        write_json(tmp / CONFIG_FILE, config)
        write_safetensors(weights, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
    return Path(directory)


def load_hf_model(directory: str | Path) -> GPT:
    """A Hugging Face GPT-2 dir as a stage 5 model (on the CPU, in eval mode)."""
    directory = Path(directory)
    config = config_from_hf(read_json(directory / CONFIG_FILE, "Hugging Face config"),
                            directory / CONFIG_FILE)
    hf_weights, source = read_hf_weights(directory, skip=mask_buffer)
    model = empty_model(GPT.stage, config)  # every value comes from the file
    load_weights_into(model, weights_from_hf(hf_weights, model, source), source)
    return model.eval()


def gpt2_tokenizer() -> Any:
    """OpenAI GPT-2's tokenizer with its table loaded: StagegptError now if it cannot be
    had (e.g. offline), not at the first encode (GPT2Tokenizer reads it on first use)."""
    tokenizer = get_tokenizer("gpt2")
    gpt2_encoding()
    return tokenizer
