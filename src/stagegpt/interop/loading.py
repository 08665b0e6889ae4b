"""`load_checkpoint`: a stagegpt checkpoint, a run dir (its newest checkpoint) or a Hugging
Face GPT-2 (stage 5) or Llama (stage 9) dir, as a `Checkpoint` ready for inference."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from stagegpt.errors import StagegptError
from stagegpt.fast import cpu
from stagegpt.fileio import read_json
from stagegpt.interop import gpt2
from stagegpt.interop.llama import load_llama_model
from stagegpt.model import GPT2_VOCAB, LanguageModel
from stagegpt.train.checkpoints import CONFIG_FILE, Checkpoint, read_checkpoint
from stagegpt.train.rundir import resolve_checkpoint_dir

HF_LOADERS = {"gpt2": gpt2.load_hf_model, "llama": load_llama_model}  # model_type -> loader


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    dtype: str = "float32") -> Checkpoint:
    """Load a stagegpt checkpoint (or run dir, or Hugging Face GPT-2 / Llama dir).

    dtype: "bfloat16" casts the weights for inference: half the bytes to read per token.
    """
    if dtype not in DTYPES:
        raise StagegptError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}", "dtype")
    checkpoint = _load(path, device)
    cpu.note_if_slow_bf16(dtype, device)
    checkpoint.model.to(DTYPES[dtype])
    return checkpoint


def _load(path: str | Path, device: str | torch.device) -> Checkpoint:
    directory = resolve_checkpoint_dir(path, kinds="checkpoint, run or Hugging Face")
    meta = read_json(directory / CONFIG_FILE, "checkpoint config")
    if not isinstance(meta, dict):
        raise StagegptError(f"{directory / CONFIG_FILE} is not a stagegpt checkpoint config")
    if "model_type" in meta:
        loader = HF_LOADERS.get(meta["model_type"]) if isinstance(meta["model_type"], str) else None
        if loader is None:
            raise StagegptError(f"{directory / CONFIG_FILE} is a Hugging Face "
                                f"{meta['model_type']!r:.40} model; stagegpt loads gpt2 "
                                "(stage 5) and llama (stage 9)")
        return hf_checkpoint(directory, loader(directory), device)
    return read_checkpoint(directory, meta, device)


def hf_checkpoint(directory: Path, model: LanguageModel,
                  device: str | torch.device = "cpu") -> Checkpoint:
    """A Hugging Face model as a Checkpoint. One with GPT-2's vocabulary gets GPT-2's
    tokenizer; if that cannot be loaded it comes back without one (and a warning), still
    usable on token ids."""
    tokenizer = None
    if model.config.vocab_size == GPT2_VOCAB:
        try:
            tokenizer = gpt2.gpt2_tokenizer()  # looked up here, so tests can stand in
        except StagegptError as err:
            warnings.warn(f"{directory}: loaded without a tokenizer: {err}", stacklevel=3)
    return Checkpoint(directory, model.stage, model.config, model.to(device), tokenizer, None)
