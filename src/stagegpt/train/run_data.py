"""The data a pretraining run reads: a prepared data dir, checked against the run.

`load_run_data` reads meta.json, both splits and the tokenizer, and refuses (one line,
naming the setting to change) a block_size the splits cannot fill, a model and batch that
cannot fit in memory, and token ids outside the vocabulary, before any model is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stagegpt.data.datasets import (
    check_ids_fit,
    load_split,
    load_tokenizer_from_data,
    read_meta,
)
from stagegpt.data.tokenizers import Tokenizer
from stagegpt.errors import StagegptError
from stagegpt.limits import check_fits
from stagegpt.model import ModelConfig
from stagegpt.train.checkpoints import training_bytes, val_batches_bytes
from stagegpt.train.config import TrainConfig


@dataclass
class RunData:
    meta: dict[str, Any]
    model_config: ModelConfig  # the run's, its vocab_size the data's
    train_tokens: np.ndarray
    val_tokens: np.ndarray
    tokenizer: Tokenizer


def load_run_data(data_dir: Path, stage: int, model_config: ModelConfig,
                  train_config: TrainConfig) -> RunData:
    """Read and check `data_dir` for training `stage` at these settings."""
    meta = read_meta(data_dir)
    mc = ModelConfig.from_dict({**model_config.to_dict(), "vocab_size": meta["vocab_size"]})
    splits = {split: load_split(data_dir, split) for split in ("train", "val")}
    for split, tokens in splits.items():
        check_enough_tokens(tokens, mc.block_size, f"the {split} split of {data_dir}")
    tc = train_config
    check_fits(training_bytes(stage, mc, tc) + val_batches_bytes(mc, tc),
               f"training stage {stage} with batch {tc.batch_size} x {mc.block_size} "
               f"tokens and {tc.eval_batches} validation batches",
               "use a smaller model or batch, or fewer validation batches (eval_batches)")
    for split, tokens in splits.items():  # every id in the vocabulary, one pass over each
        check_ids_fit(tokens, mc.vocab_size, f"{data_dir}/{split}.bin")
    return RunData(meta, mc, splits["train"], splits["val"], load_tokenizer_from_data(data_dir))


def check_enough_tokens(tokens: np.ndarray, block_size: int, what: str) -> None:
    """A window of block_size + 1 tokens, and more than one place to cut it."""
    if len(tokens) <= block_size + 1:
        raise StagegptError(
            f"block_size {block_size} needs more than {block_size + 1} tokens, but {what} "
            f"has {len(tokens)}; use a smaller block_size or more text", "block_size")
