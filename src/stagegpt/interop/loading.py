"""`load_checkpoint`: a stagegpt checkpoint, a run dir (its newest checkpoint) or a Hugging
Face GPT-2 (stage 5) or Llama (stage 9) dir, as a `Checkpoint` ready for inference."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from stagegpt.data.tokenizers import get_tokenizer
from stagegpt.errors import StagegptError
from stagegpt.fast import cpu
from stagegpt.fileio import read_json
from stagegpt.interop import gpt2
from stagegpt.interop.llama import load_llama_model
from stagegpt.model import GPT2_VOCAB, LanguageModel
from stagegpt.train.checkpoints import CONFIG_FILE, Checkpoint, read_checkpoint
from stagegpt.train.distributed import resolve_device
from stagegpt.train.rundir import resolve_checkpoint_dir

HF_LOADERS = {"gpt2": gpt2.load_hf_model, "llama": load_llama_model}  # model_type -> loader


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    dtype: str = "float32") -> Checkpoint:
    """Load a stagegpt checkpoint (or run dir, or Hugging Face GPT-2 / Llama dir).

    device: "cpu", "cuda", "mps" (with an index, "cuda:1", if you like) or a torch.device.
    dtype: "bfloat16" casts the weights for inference: half the bytes to read per token.
    """
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise StagegptError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r:.40}",
                            "dtype")
    device = checked_device(device)
    checkpoint = _load(path, device)
    cpu.note_if_slow_bf16(dtype, device, "inference")
    checkpoint.model.to(DTYPES[dtype])
    return checkpoint


def checked_device(device: object) -> torch.device:
    """`device` as a torch.device of a kind that is here; StagegptError naming `device`
    otherwise (torch would fail deep inside, with an AssertionError for a missing GPU)."""
    try:
        parsed = torch.device(device) if isinstance(device, str | torch.device) else None
    except RuntimeError:  # not a device name torch knows
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda", "mps"):
        raise StagegptError(f"device must be cpu, cuda or mps (or a torch.device), got "
                            f"{device!r:.40}", "device")
    resolve_device(parsed.type)  # refuses a GPU that is not there
    return parsed


def _load(path: str | Path, device: str | torch.device) -> Checkpoint:
    directory = resolve_checkpoint_dir(path, kinds="checkpoint, run or Hugging Face")
    meta = read_json(directory / CONFIG_FILE, "checkpoint config")
    if not isinstance(meta, dict):
        raise StagegptError(f"{directory / CONFIG_FILE} is not a stagegpt checkpoint config")
    if "model_type" in meta:
        return hf_checkpoint(directory, hf_loader(meta, directory / CONFIG_FILE)(directory),
                             device)
    return read_checkpoint(directory, meta, device)


def hf_loader(meta: Any, config_path: Path) -> Callable[[Path], LanguageModel]:
    """The loader of the Hugging Face model whose config.json (at `config_path`) holds
    `meta`, chosen by its model_type."""
    kind = meta.get("model_type") if isinstance(meta, dict) else None
    loader = HF_LOADERS.get(kind) if isinstance(kind, str) else None
    if loader is None:
        raise StagegptError(f"{config_path} is not a Hugging Face GPT-2 or Llama config "
                            f"(model_type {kind!r:.40}); stagegpt loads gpt2 (stage 5) and "
                            "llama (stage 9)")
    return loader


def hf_checkpoint(directory: Path, model: LanguageModel,
                  device: str | torch.device = "cpu") -> Checkpoint:
    """A Hugging Face model as a Checkpoint. One with GPT-2's vocabulary gets GPT-2's
    tokenizer, which reads its table on first use: where the table cannot be had (offline
    and not cached) that use raises a StagegptError saying how to get it, and the model
    still works on token ids."""
    tokenizer = get_tokenizer("gpt2") if model.config.vocab_size == GPT2_VOCAB else None
    return Checkpoint(directory, model.stage, model.config, model.to(device), tokenizer, None)
