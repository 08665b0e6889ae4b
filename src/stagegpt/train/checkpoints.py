"""Checkpoints on disk: safetensors for weights, JSON for everything else.

A checkpoint directory holds `config.json` (stage, model config, tokenizer spec,
version), `model.safetensors`, the tokenizer's files and, for training runs,
`trainer_state.json` and `optimizer.pt`. Directories are written with `atomic_dir`, so a
crash never leaves half a checkpoint. `stagegpt.interop.load_checkpoint` reads these and
Hugging Face directories alike.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from stagegpt.data.tokenizers import load_tokenizer
from stagegpt.errors import StagegptError
from stagegpt.fileio import atomic_dir, read_json, write_json
from stagegpt.model.config import ModelConfig
from stagegpt.model.stages import LanguageModel, build_model

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
                    extra: dict[str, Any] | None = None) -> Path:
    """Write a complete checkpoint to `directory` in one atomic step."""
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


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, refusing a missing or truncated one with a clear message."""
    if not path.is_file():
        raise StagegptError(f"{path} is missing; the checkpoint is incomplete")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, RuntimeError) as err:
        raise StagegptError(f"{path} is not a readable safetensors file ({err})") from None


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
        state = read_json(directory / STATE_FILE, "trainer state")
    return Checkpoint(directory, meta["stage"], config, model.to(device).eval(), tokenizer, state)


def empty_model(stage: int, config: ModelConfig) -> LanguageModel:
    """A model of `stage` and `config` with uninitialized weights, to load values into: built
    on the meta device (no memory, no random init), then given real storage."""
    with torch.device("meta"):
        model = build_model(stage, config)
    model = model.to_empty(device="cpu")
    model.tie_weights()  # to_empty gives the head its own storage; share wte's again
    return model


def load_optimizer_state(directory: str | Path) -> dict[str, Any]:
    """Optimizer state, loaded without ever unpickling arbitrary objects."""
    path = Path(directory) / OPTIMIZER_FILE
    if not path.is_file():
        raise StagegptError(f"{path} is missing; cannot resume the optimizer from {directory}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here means "do not trust this file"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise StagegptError(
            f"refusing to load {path}: not a plain tensor file ({reason})"
        ) from None
