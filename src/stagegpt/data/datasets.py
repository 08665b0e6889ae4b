"""Reading a data dir: its meta.json checked against its bins, splits as memmaps, batches.

A data dir (written by `stagegpt.data.prepare`) holds

    train.bin, val.bin   the token ids, little-endian uint16 (vocab <= 65,536) or uint32
    meta.json            tokenizer spec, dtype, token counts, source, sha256, settings
                         (and for the Markov source its exact entropies in nats/token)
    vocab.json | tokenizer.json   the tokenizer's own file (char | bpe), if it has one

Training reads a split as a memmap (`load_split`) and draws random windows from it
(`sample_batch`), or walks it in order through the `TokenWindows` Dataset.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stagegpt.data.finetune_records import tokenizer_of_finetune_dir
from stagegpt.data.tokenizers import Tokenizer, load_tokenizer
from stagegpt.errors import StagegptError
from stagegpt.fileio import read_json

SPLITS = ("train", "val")
REQUIRED_META = ("tokenizer", "vocab_size", "dtype", "train_tokens", "val_tokens", "source",
                 "sha256")


def dtype_for_vocab(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def disk_dtype(name: str) -> np.dtype:
    return np.dtype(name).newbyteorder("<")


def read_meta(data_dir: str | Path) -> dict[str, Any]:
    """meta.json, checked against the bins beside it."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise StagegptError(f"data dir {data_dir} does not exist; create it with "
                            "`stagegpt prepare`")
    if not (data_dir / "meta.json").exists():
        raise StagegptError(f"{data_dir} has no meta.json, so it is not a prepared data dir; "
                            "create it with `stagegpt prepare`")
    meta = read_json(data_dir / "meta.json", "data meta file")
    missing = [k for k in REQUIRED_META if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise StagegptError(f"{data_dir}/meta.json lacks {', '.join(missing)}; prepare the "
                            "data again")
    for key in ("vocab_size", "train_tokens", "val_tokens"):
        if not isinstance(meta[key], int) or isinstance(meta[key], bool) or meta[key] < 0:
            raise StagegptError(f"{data_dir}/meta.json has {key} {meta[key]!r}, not a count; "
                                "prepare the data again")
    spec = meta["tokenizer"]
    spec_vocab = spec.get("vocab_size") if isinstance(spec, dict) else None
    if spec_vocab is not None and spec_vocab != meta["vocab_size"]:
        raise StagegptError(f"{data_dir}/meta.json says vocab_size {meta['vocab_size']} but its "
                            f"tokenizer has {spec_vocab} tokens; prepare the data again")
    if meta["dtype"] not in ("uint16", "uint32"):
        raise StagegptError(f"{data_dir}/meta.json has dtype {meta['dtype']!r}; expected "
                            "uint16 or uint32")
    if meta["vocab_size"] > np.iinfo(meta["dtype"]).max + 1:
        raise StagegptError(f"{data_dir}: vocab {meta['vocab_size']} does not fit "
                            f"{meta['dtype']}; prepare the data again")
    for key in ("entropy_rate", "bigram_entropy", "unigram_entropy", "uniform_entropy"):
        value = meta.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
                math.isfinite(value) and value >= 0):
            raise StagegptError(f"{data_dir}/meta.json has {key} {value!r:.40}, not an "
                                "entropy; prepare the data again")
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split in SPLITS:
        path, tokens = data_dir / f"{split}.bin", meta[f"{split}_tokens"]
        size = path.stat().st_size if path.is_file() else None
        if size != tokens * itemsize:
            found = (f"has {size:,} bytes" if size is not None else
                     "is not a regular file" if path.exists() else "is missing")
            raise StagegptError(f"{path} {found} but meta.json says {tokens:,} {meta['dtype']} "
                                "tokens; the data dir is damaged, prepare it again")
    return meta


def load_split(data_dir: str | Path, split: str) -> np.memmap:
    """The split's token ids as a read-only memmap (nothing is read until indexed)."""
    if split not in SPLITS:
        raise StagegptError(f"unknown split {split!r}; use train or val")
    meta = read_meta(data_dir)
    if meta[f"{split}_tokens"] == 0:
        raise StagegptError(f"the {split} split of {data_dir} is empty; prepare more text")
    return np.memmap(Path(data_dir) / f"{split}.bin", dtype=disk_dtype(meta["dtype"]),
                     mode="r")


def load_tokenizer_from_data(data_dir: str | Path) -> Tokenizer:
    """The tokenizer of a token-bin data dir or of a fine-tuning data dir."""
    meta_path = Path(data_dir) / "meta.json"
    if meta_path.is_file():
        meta = read_json(meta_path, "data meta file")
        if isinstance(meta, dict) and "task" in meta:
            return tokenizer_of_finetune_dir(data_dir)
    meta = read_meta(data_dir)
    tokenizer = load_tokenizer(meta["tokenizer"], data_dir)
    if tokenizer.vocab_size != meta["vocab_size"]:
        raise StagegptError(f"{data_dir}: its tokenizer has {tokenizer.vocab_size} tokens but "
                            f"meta.json says vocab_size {meta['vocab_size']}; prepare the data "
                            "again")
    return tokenizer


def _too_short(n: int, block_size: int) -> StagegptError:
    return StagegptError(f"a split of {n} tokens is too short for block size {block_size} "
                         f"(one window needs {block_size + 1}); lower the block size or "
                         "prepare more text")


def sample_batch(tokens: np.ndarray, batch_size: int, block_size: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch_size` random windows: x (B, T) int64 and y, the same windows shifted by one.

    Offsets come from `torch.randint(..., generator=generator)`, so restoring the
    generator's state reproduces the batches exactly.
    """
    n = len(tokens)
    if n <= block_size:
        raise _too_short(n, block_size)
    offsets = torch.randint(n - block_size, (batch_size,), generator=generator)  # (B,)
    index = offsets.numpy()[:, None] + np.arange(block_size + 1)  # (B, T+1)
    window = torch.from_numpy(np.asarray(tokens[index], dtype=np.int64))  # (B, T+1)
    return window[:, :-1].contiguous(), window[:, 1:].contiguous()


ID_CHUNK = 1 << 24  # ids read at a time when checking a split


def largest_id(tokens: np.ndarray) -> int:
    """The largest token id in a split, read a chunk at a time (a split may be a memmap
    larger than memory)."""
    return max(int(tokens[i:i + ID_CHUNK].max()) for i in range(0, len(tokens), ID_CHUNK))


def check_ids_fit(tokens: np.ndarray, vocab_size: int, source: str,
                  param: str | None = None) -> None:
    """Refuse a split holding an id outside a model's vocabulary of `vocab_size` (a signed
    array is also read for negative ids; a prepared split is unsigned)."""
    if not len(tokens):
        return
    low = int(tokens.min()) if tokens.dtype.kind == "i" else 0
    bad = low if low < 0 else largest_id(tokens)
    if not 0 <= bad < vocab_size:
        raise StagegptError(f"{source} holds token id {bad}, outside the vocabulary of "
                            f"{vocab_size}; tokenize the data again with the model's "
                            "tokenizer", param)


class TokenWindows(torch.utils.data.Dataset):
    """Windows over a split: item i is (x, y), the `block_size + 1` tokens from
    i * stride on, with y = x shifted by one, both (T,) int64.

    stride = block_size (the default) tiles the split without overlap (an evaluation
    pass sees each token once as a target); stride = 1 gives every window.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, stride: int | None = None):
        self.block_size = block_size
        self.stride = block_size if stride is None else stride
        if block_size < 1 or self.stride < 1:
            raise StagegptError("block size and stride must be positive")
        if len(tokens) <= block_size:
            raise _too_short(len(tokens), block_size)
        self.tokens = tokens
        self._source: tuple[str, str] | None = None

    @classmethod
    def from_data_dir(cls, data_dir: str | Path, split: str, block_size: int,
                      stride: int | None = None) -> TokenWindows:
        windows = cls(load_split(data_dir, split), block_size, stride)
        windows._source = (str(data_dir), split)
        return windows

    def __len__(self) -> int:
        return (len(self.tokens) - self.block_size - 1) // self.stride + 1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} out of range (0..{len(self) - 1})")
        start = i * self.stride
        window = np.asarray(self.tokens[start:start + self.block_size + 1], dtype=np.int64)
        window = torch.from_numpy(window)  # (T+1,)
        return window[:-1], window[1:]

    def __getstate__(self) -> dict[str, Any]:
        """Workers reopen the memmap instead of receiving a pickled copy of the split."""
        state = dict(self.__dict__)
        if self._source is not None:
            state["tokens"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.tokens is None:
            self.tokens = load_split(*self._source)
