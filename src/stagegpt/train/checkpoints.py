"""Checkpoints on disk: safetensors for weights, JSON for everything else.

A checkpoint directory holds `config.json` (stage, model config, tokenizer spec,
version), `model.safetensors`, the tokenizer's files and, for training runs,
`trainer_state.json` and `optimizer.pt`. Directories are written with `atomic_dir`, so a
crash never leaves half a checkpoint. `stagegpt.interop.load_checkpoint` reads these and
Hugging Face directories alike.
"""

from __future__ import annotations

import base64
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.overrides import TorchFunctionMode

from stagegpt.data.tokenizers import load_tokenizer
from stagegpt.errors import StagegptError
from stagegpt.fileio import atomic_dir, check_replaceable, read_json, write_json
from stagegpt.limits import check_fits
from stagegpt.model.config import ModelConfig
from stagegpt.model.stages import LanguageModel, build_model
from stagegpt.train.config import MAX_COUNT, TrainConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"


@dataclass
class Checkpoint:
    path: Path
    stage: int
    config: ModelConfig
    model: LanguageModel
    tokenizer: Any
    trainer_state: dict[str, Any] | None


def unique_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tied aliases dropped (the tied head is stored once, as wte)."""
    seen: set[int] = set()
    weights = {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        weights[name] = tensor.detach().contiguous()
    return weights


def write_safetensors(weights: dict[str, torch.Tensor], path: str | Path,
                      metadata: dict[str, str] | None = None) -> None:
    """`safetensors.torch.save_file`, but a failed write (a full disk, a read-only file
    system) raises the OSError it is, not a SafetensorError, so the CLI can report it."""
    try:
        save_file(weights, str(path), metadata=metadata)
    except SafetensorError as err:
        code = re.search(r"\(os error (\d+)\)", str(err))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None


def write_torch(obj: Any, path: str | Path) -> None:
    """`torch.save` through a Python file, so a failed write raises its OSError (torch.save
    itself reports a full disk as an obscure RuntimeError)."""
    try:
        with open(path, "wb") as f:
            torch.save(obj, f)
    except RuntimeError as err:
        cause = err.__context__
        if not isinstance(cause, OSError):
            raise
        raise OSError(cause.errno, cause.strerror, str(path)) from None


def save_checkpoint(directory: str | Path, model: LanguageModel, tokenizer: Any,
                    trainer_state: dict[str, Any] | None = None,
                    optimizer_state: dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write a complete checkpoint to `directory` in one atomic step (an existing
    `directory` is replaced only with `overwrite=True`)."""
    check_replaceable(directory, overwrite)
    from stagegpt import __version__

    model = getattr(model, "_orig_mod", model)  # never save torch.compile's wrapper
    config = {"stage": model.stage, "model": model.config.to_dict(),
              "tokenizer": tokenizer.to_spec() if tokenizer is not None else None,
              "stagegpt_version": __version__, **(extra or {})}
    with atomic_dir(directory) as tmp:
        write_json(tmp / CONFIG_FILE, config)
        weights = {k: v.cpu() for k, v in unique_weights(model).items()}
        write_safetensors(weights, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save(tmp)
        if trainer_state is not None:
            write_json(tmp / STATE_FILE, trainer_state)
        if optimizer_state is not None:
            write_torch(optimizer_state, tmp / OPTIMIZER_FILE)
    return Path(directory)


WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def check_weight_tensors(weights: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """`weights`, refused unless every tensor is an ordinary dense floating-point one
    (loading would silently cast integers or booleans, and fail on sparse, quantized or
    meta tensors deep inside torch) holding finite values (a NaN weight makes every
    logit NaN, and sampling would print the same token over and over)."""
    for name, tensor in weights.items():
        if (tensor.layout != torch.strided or tensor.is_quantized or tensor.is_meta
                or tensor.dtype not in WEIGHT_DTYPES):
            kind = tensor.dtype if tensor.layout == torch.strided else tensor.layout
            raise StagegptError(f"{path}: {name} is a {str(kind).removeprefix('torch.')} "
                                "tensor; weights must be dense float32, bfloat16, float16 or "
                                "float64 tensors (is the file damaged?)")
        if not torch.isfinite(tensor).all():
            raise StagegptError(f"{path}: {name} holds NaN or infinite values; the file is "
                                "damaged or its run diverged: use an earlier checkpoint")
    return weights


def read_weights(path: Path, skip: Callable[[str], bool] | None = None
                 ) -> dict[str, torch.Tensor]:
    """Read a safetensors file, refusing a missing or truncated one with a clear message.
    skip: names of tensors to leave unread (buffers that hold nothing to load)."""
    if not path.is_file():
        raise StagegptError(f"{path} is missing; the checkpoint is incomplete")
    try:
        with safe_open(str(path), framework="pt") as f:
            weights = {key: f.get_tensor(key) for key in f.keys()
                       if skip is None or not skip(key)}
    except (SafetensorError, OSError, RuntimeError) as err:
        raise StagegptError(f"{path} is not a readable safetensors file ({err})") from None
    return check_weight_tensors(weights, path)


def load_weights_into(model: torch.nn.Module, weights: dict[str, torch.Tensor],
                      source: Path) -> None:
    """Copy `weights` into `model`, insisting that names and shapes match exactly."""
    expected = unique_weights(model)
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise StagegptError(
            f"{source} does not match its config: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}; was it written for another stage or shape?"
        )
    for name, tensor in weights.items():
        if tensor.shape != expected[name].shape:
            raise StagegptError(
                f"{source}: {name} has shape {tuple(tensor.shape)} but the config needs "
                f"{tuple(expected[name].shape)}; the checkpoint and its config.json disagree"
            )
    model.load_state_dict(weights, strict=False)


def read_checkpoint(directory: Path, meta: dict[str, Any],
                    device: str | torch.device = "cpu") -> Checkpoint:
    """The stagegpt checkpoint in `directory`, whose config.json holds `meta`."""
    if "stage" not in meta or not isinstance(meta.get("model"), dict):
        raise StagegptError(f"{directory / CONFIG_FILE} is not a stagegpt checkpoint config")
    config = ModelConfig.from_dict(meta["model"])
    if "finetune" in meta and not (directory / WEIGHTS_FILE).exists():
        raise StagegptError(f"{directory} is a fine-tune that keeps only what it changed (LoRA "
                            "adapters or a head), not a whole model: use it with `stagegpt "
                            "chat` or `classify`, or fold it into a plain checkpoint first "
                            f"with `stagegpt merge --ckpt {directory} --out DIR`")
    model = empty_model(meta["stage"], config)
    load_weights_into(model, read_weights(directory / WEIGHTS_FILE), directory / WEIGHTS_FILE)
    tokenizer = None
    if meta.get("tokenizer") is not None:
        tokenizer = load_tokenizer(meta["tokenizer"], directory)
        if tokenizer.vocab_size > config.vocab_size:
            raise StagegptError(
                f"{directory}: the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                f"{config.vocab_size}; its config.json and tokenizer do not belong together"
            )
    state = None
    if (directory / STATE_FILE).is_file():
        state = read_trainer_state(directory)
    return Checkpoint(directory, meta["stage"], config, model.to(device).eval(), tokenizer, state)


class _NoFills(TorchFunctionMode):
    """Skips the init functions' fills: for a model whose values are loaded next, or that
    lives on the meta device (there the first normal_ would import PyTorch's Python
    decompositions, and `to_empty` its Python references: 1.6 s of a command's start)."""

    FILLS = {torch.nn.init.normal_, torch.nn.init.zeros_, torch.nn.init.ones_,
             torch.nn.init.uniform_, torch.nn.init.kaiming_uniform_, torch.Tensor.normal_,
             torch.Tensor.zero_, torch.Tensor.fill_, torch.Tensor.uniform_}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.FILLS:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def meta_model(stage: int, config: ModelConfig) -> LanguageModel:
    """`stage`'s model with `config` on the meta device: shapes only, no memory, no init."""
    with torch.device("meta"), _NoFills():
        return build_model(stage, config)


def model_bytes(stage: int, config: ModelConfig) -> int:
    """The bytes of `stage`'s fp32 weights with `config`, counted on the meta device with
    one and two layers (every layer is the same size), so a config from a file that asks
    for a billion layers is sized at once, not built."""
    try:
        one, two = (sum(t.numel() for t in meta_model(stage, replace(config, n_layer=n))
                        .state_dict().values()) for n in (1, 2))
    except RuntimeError as err:  # sizes whose bytes overflow 64 bits
        raise StagegptError(f"a stage {stage} model of {config.to_dict()} is too large for "
                            f"any machine (its byte counts overflow 64 bits: {str(err)[:40]}"
                            "...); is its config right?") from None
    return 4 * (one + (config.n_layer - 1) * (two - one))


def training_bytes(stage: int, model_config: ModelConfig, train_config: TrainConfig) -> int:
    """A floor on what training needs: weights, gradients and AdamW's two moments (16 bytes
    per parameter), plus a (batch, T, width) activation per layer and the logits."""
    c, t = model_config, train_config
    rows = t.batch_size * c.block_size
    activations = 4 * rows * (c.n_embd * (c.n_layer + 1) * 16 + c.vocab_size)
    return 4 * model_bytes(stage, c) + activations


def val_batches_bytes(model_config: ModelConfig, train_config: TrainConfig) -> int:
    """The fixed validation batches a Trainer holds: eval_batches (x, y) pairs of
    (batch, T) int64 ids."""
    return train_config.eval_batches * 2 * train_config.batch_size * model_config.block_size * 8


def empty_model(stage: int, config: ModelConfig) -> LanguageModel:
    """A model of `stage` and `config` with uninitialized weights, to load values into:
    its size checked on the meta device first, then built on the CPU without init."""
    check_fits(model_bytes(stage, config), f"a stage {stage} model of {config.to_dict()}",
               "is its config.json right?")
    with _NoFills():
        return build_model(stage, config)


def rng_to_str(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode("ascii")


def rng_from_str(text: str, like: torch.Tensor) -> torch.Tensor:
    """A CPU generator's state from its base64 text, refused unless it is the size `like`
    is and a generator accepts it (torch checks the Mersenne Twister state inside)."""
    data = base64.b64decode(text, validate=True)
    if len(data) != like.numel():
        raise ValueError(f"{len(data)} bytes where an RNG state has {like.numel()}")
    state = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    try:
        torch.Generator().set_state(state)  # a scratch generator: nothing else changes
    except RuntimeError as err:
        raise ValueError(f"not a generator state ({err})") from None
    return state


STATE_TYPES = {"step": int, "tokens": int, "elapsed": float, "best_val": float,
               "data_rng": str, "torch_rng": str}


def read_trainer_state(directory: Path) -> dict[str, Any]:
    """RUN/.../step_N/trainer_state.json, every field checked: counts are counts (the step
    is N), times are finite, RNG states decode to states of the right size."""
    path = directory / "trainer_state.json"
    state = read_json(path, "trainer state")

    def refuse(why: str) -> StagegptError:
        return StagegptError(f"{path} is damaged ({why}); delete {directory} to resume from "
                             "the checkpoint before it")

    if not isinstance(state, dict):
        raise refuse("not a table of fields")
    for key, kind in STATE_TYPES.items():
        value = state.get(key)
        ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
        if not ok or isinstance(value, bool):
            raise refuse(f"{key} is {value!r:.40}, not a {kind.__name__}")
    step_name = directory.name.removeprefix("step_")
    if not 0 <= state["step"] <= MAX_COUNT or (step_name.isdigit()
                                               and state["step"] != int(step_name)):
        raise refuse(f"step {state['step']} in {directory.name}")
    if not 0 <= state["tokens"] <= state["step"] * MAX_COUNT:
        raise refuse(f"{state['tokens']:.3g} tokens in {state['step']} steps")
    if not (math.isfinite(state["elapsed"]) and state["elapsed"] >= 0):
        raise refuse("a negative or infinite time")
    if math.isnan(state["best_val"]):
        raise refuse("best_val is nan")
    ranks = state.get("torch_rng_ranks", [])  # under DDP, every rank's
    if not isinstance(ranks, list) or not all(isinstance(r, str) for r in ranks):
        raise refuse("torch_rng_ranks is not a list of RNG states")
    try:
        state["data_rng"] = rng_from_str(state["data_rng"], torch.Generator().get_state())
        state["torch_rng"] = rng_from_str(state["torch_rng"], torch.get_rng_state())
        state["torch_rng_ranks"] = [rng_from_str(r, torch.get_rng_state()) for r in ranks]
    except ValueError as err:  # binascii.Error is a ValueError
        raise refuse(f"an RNG state: {' '.join(str(err).split())[:60]}") from None
    return state


ADAMW_STATE = {"step", "exp_avg", "exp_avg_sq"}
RUN_SETTINGS = {"betas", "eps", "weight_decay", "amsgrad", "maximize"}  # lr is scheduled


def check_optimizer_state(state: Any, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Refuse an optimizer state that does not fit `optimizer` exactly: the same parameter
    groups, hyperparameters of the same types, and for every parameter AdamW's tensors of
    its shape and dtype. (Loaded unchecked, a state from a model of another width makes
    the fused kernel write past its tensors' ends.)"""

    def refuse(why: str) -> None:
        raise StagegptError(f"{path} does not fit this model's optimizer ({why}); it belongs to "
                            f"another model or is damaged: delete {path.parent} to resume from "
                            "the checkpoint before it")

    if not isinstance(state, dict) or set(state) != {"state", "param_groups"}:
        refuse("not an optimizer state")
    groups, ours = state["param_groups"], optimizer.param_groups
    if not isinstance(groups, list) or len(groups) != len(ours):
        refuse(f"expected {len(ours)} parameter groups")
    params, start = [], 0
    for group, own in zip(groups, ours, strict=True):
        if not isinstance(group, dict) or set(group) != set(own):
            refuse("a parameter group of another optimizer")
        if group["params"] != list(range(start, start + len(own["params"]))):
            refuse("parameter groups of other sizes")
        for key, value in own.items():
            if key != "params" and type(group[key]) is not type(value):
                refuse(f"{key} is {group[key]!r:.40}, not a {type(value).__name__}")
            if isinstance(value, float) and not math.isfinite(group[key]):
                refuse(f"{key} is {group[key]!r}")
            if key in RUN_SETTINGS and group[key] != value:  # the run's own, as resumed
                refuse(f"{key} is {group[key]!r:.40}, but this run's is {value!r}")
        params += own["params"]
        start += len(own["params"])
    entries = state["state"]
    if not isinstance(entries, dict) or not set(entries) <= set(range(len(params))):
        refuse("state for parameters this model does not have")
    for index, entry in entries.items():
        param = params[index]
        if not isinstance(entry, dict) or set(entry) != ADAMW_STATE:
            refuse(f"parameter {index} has no AdamW state")
        for key in ("exp_avg", "exp_avg_sq"):
            tensor = entry[key]
            if (not isinstance(tensor, torch.Tensor) or tensor.shape != param.shape
                    or tensor.dtype != param.dtype or tensor.layout != torch.strided):
                refuse(f"parameter {index}'s {key} is not a dense {param.dtype} tensor of "
                       f"shape {tuple(param.shape)}")
        step = entry["step"]
        if (not isinstance(step, torch.Tensor) or step.numel() != 1 or not step.is_floating_point()
                or not torch.isfinite(step).all() or step.item() < 0):
            refuse(f"parameter {index}'s step is not a count")


def load_optimizer_state(directory: str | Path) -> dict[str, Any]:
    """Optimizer state, loaded without ever unpickling arbitrary objects."""
    path = Path(directory) / OPTIMIZER_FILE
    if not path.is_file():
        raise StagegptError(f"{path} is missing; cannot resume the optimizer from {directory}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any failure means "do not trust this file"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise StagegptError(
            f"refusing to load {path}: not a plain tensor file ({reason})"
        ) from None
