"""`load_checkpoint`: a stagegpt checkpoint, a run dir (its newest checkpoint) or a Hugging
Face GPT-2 dir, as a `Checkpoint` ready for inference."""

from __future__ import annotations

from pathlib import Path

import torch

from stagegpt.errors import StagegptError
from stagegpt.fileio import read_json
from stagegpt.interop.gpt2 import load_hf_dir
from stagegpt.train.checkpoints import CONFIG_FILE, Checkpoint, read_checkpoint
from stagegpt.train.rundir import resolve_checkpoint_dir


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a stagegpt checkpoint (or run dir, or Hugging Face GPT-2 dir) for inference."""
    directory = resolve_checkpoint_dir(path)
    meta = read_json(directory / CONFIG_FILE, "checkpoint config")
    if not isinstance(meta, dict):
        raise StagegptError(f"{directory / CONFIG_FILE} is not a stagegpt checkpoint config")
    if "model_type" in meta:
        return load_hf_dir(directory, device)  # refuses every model_type but "gpt2"
    return read_checkpoint(directory, meta, device)
