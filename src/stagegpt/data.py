"""Token bins on disk: `prepare_*` writes a data dir, the trainer reads it.

A data dir holds

    train.bin, val.bin   the token ids, little-endian uint16 (vocab <= 65,536) or uint32
    meta.json            tokenizer spec, dtype, token counts, source, sha256, settings
                         (and for the Markov source its exact entropies in nats/token)
    vocab.json | tokenizer.json   the tokenizer's own file (char | bpe), if it has one

Training reads a split as a memmap (`load_split`) and draws random windows from it
(`sample_batch`), or walks it in order through the `TokenWindows` Dataset.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from stagegpt.corpora import Corpus
from stagegpt.errors import StagegptError
from stagegpt.fileio import atomic_dir, read_json, write_json
from stagegpt.markov import FLOOR, MarkovSource, markov_alphabet
from stagegpt.tokenizers import CharTokenizer, Tokenizer, get_tokenizer, load_tokenizer

SPLITS = ("train", "val")
# Each split must hold at least one training window: a 64-token context (the `small`
# preset) plus the target after it. Models with longer contexts need more; the trainer
# checks its own block size against the split.
DEFAULT_MIN_VAL_TOKENS = 65
REQUIRED_META = ("tokenizer", "vocab_size", "dtype", "train_tokens", "val_tokens", "source",
                 "sha256")


def dtype_for_vocab(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def _disk_dtype(name: str) -> np.dtype:
    return np.dtype(name).newbyteorder("<")


# ---------------------------------------------------------------------------------------
# Writing


_CUT = re.compile(r"(?<=\S)\n(?=\S)")


def text_chunks(text: str, size: int = 1 << 18) -> list[str]:
    """`text` in pieces of about `size` characters that tokenize exactly like the whole.

    Pieces end after a lone newline between two non-space characters. GPT-2's split
    pattern (used by gpt2 and bpe) never puts a newline and a non-space character in one
    pre-token, and a lone newline is one pre-token whether or not the text ends after it
    (a longer run of whitespace is not: at the very end it stays whole, mid-text it is
    split before its last character). Python's whitespace class covers every character
    the tokenizers' does, so no cut sits next to what they see as whitespace. Every tokenizer
    here splits at the cuts anyway, and the pieces' ids, joined, equal the whole text's.
    """
    pieces, start = [], 0
    while start < len(text):
        match = _CUT.search(text, start + size) if start + size < len(text) else None
        end = match.end() if match else len(text)
        pieces.append(text[start:end])
        start = end
    return pieces


def _write_tokens(path: Path, text: str, tokenizer: Tokenizer, dtype: str, desc: str,
                  progress: bool) -> tuple[int, int, float]:
    """Tokenize `text` into `path`; returns (tokens, UTF-8 bytes, seconds)."""
    chunks = text_chunks(text, tokenizer.chunk_chars)
    per_group = max(1, (1 << 20) // tokenizer.chunk_chars)  # ~1 MB between progress updates
    total = len(text.encode("utf-8"))
    count, started = 0, time.perf_counter()
    with open(path, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, desc=desc,
                                     file=sys.stderr, disable=None if progress else True,
                                     leave=False) as bar:
        for i in range(0, len(chunks), per_group):
            group = chunks[i:i + per_group]
            ids = tokenizer.encode_array(group)
            if ids.size and not 0 <= ids.min() <= ids.max() < tokenizer.vocab_size:
                raise StagegptError(f"{tokenizer.name} produced an id outside its vocabulary")
            f.write(ids.astype(_disk_dtype(dtype)).tobytes())  # a full disk raises ENOSPC
            count += ids.size
            bar.update(sum(len(c.encode("utf-8")) for c in group))
    return count, total, time.perf_counter() - started


def _check_split_sizes(counts: dict[str, int], min_tokens: int, hint: str) -> None:
    for split, n in counts.items():
        if n < min_tokens:
            raise StagegptError(f"the {split} split has only {n} tokens, fewer than the "
                                f"{min_tokens} needed for one window (--min-val-tokens); {hint}")


def _version() -> str:
    from stagegpt import __version__

    return __version__


def prepare_corpus(corpus: Corpus, tokenizer_name: str, out: str | Path,
                   settings: dict[str, Any] | None = None,
                   min_val_tokens: int = DEFAULT_MIN_VAL_TOKENS,
                   progress: bool = True) -> tuple[dict[str, Any], dict[str, float]]:
    """Tokenize a corpus into `out` (replaced as a whole, or left untouched on error).

    A char vocabulary covers train and val; a bpe tokenizer is trained on train only.
    Returns (meta, stats) where stats has the tokenization "seconds" and "bytes".
    """
    if not corpus.train or not corpus.val:
        _check_split_sizes({"train": len(corpus.train), "val": len(corpus.val)},
                           max(1, min_val_tokens), "give more text")
    if tokenizer_name == "char":
        tokenizer = get_tokenizer("char", [corpus.train, corpus.val])
    else:
        tokenizer = get_tokenizer(tokenizer_name, corpus.train,
                                  progress=progress and sys.stderr.isatty())
    dtype = dtype_for_vocab(tokenizer.vocab_size)
    counts, seconds, nbytes = {}, 0.0, 0
    with atomic_dir(out) as tmp:
        for split, text in (("train", corpus.train), ("val", corpus.val)):
            n, b, s = _write_tokens(tmp / f"{split}.bin", text, tokenizer, dtype, split, progress)
            counts[split], nbytes, seconds = n, nbytes + b, seconds + s
        _check_split_sizes(counts, min_val_tokens, "give more text or a larger --val-fraction")
        tokenizer.save(tmp)
        meta = {
            "stagegpt_version": _version(),
            "source": corpus.source,
            "tokenizer": tokenizer.to_spec(),
            "vocab_size": tokenizer.vocab_size,
            "dtype": dtype,
            "train_tokens": counts["train"],
            "val_tokens": counts["val"],
            "sha256": corpus.sha256,
            "text_bytes": nbytes,
            "documents": corpus.documents,
            "settings": settings or {},
        }
        write_json(tmp / "meta.json", meta)
    return meta, {"seconds": seconds, "bytes": float(nbytes)}


def prepare_markov(out: str | Path, order: int, vocab: int, tokens: int, seed: int,
                   val_fraction: float = 0.1, concentration: float = 0.1,
                   settings: dict[str, Any] | None = None,
                   min_val_tokens: int = DEFAULT_MIN_VAL_TOKENS) -> dict[str, Any]:
    """Sample `tokens` ids from a random order-`order` Markov source into `out`; the last
    `val_fraction` of the stream is val. meta.json gets the source's exact entropies."""
    if not 0.0 < val_fraction < 1.0:
        raise StagegptError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    n_val = int(round(tokens * val_fraction))
    _check_split_sizes({"train": tokens - n_val, "val": n_val}, min_val_tokens,
                       "raise --tokens or --val-fraction")
    source = MarkovSource.random(order, vocab, seed, concentration)
    pi = source.stationary()
    ids = source.sample(tokens, seed, pi)
    tokenizer = CharTokenizer(markov_alphabet(vocab))
    dtype = dtype_for_vocab(vocab)
    stream = ids.astype(_disk_dtype(dtype))
    with atomic_dir(out) as tmp:
        (tmp / "train.bin").write_bytes(stream[: tokens - n_val].tobytes())
        (tmp / "val.bin").write_bytes(stream[tokens - n_val:].tobytes())
        tokenizer.save(tmp)
        meta = {
            "stagegpt_version": _version(),
            "source": "markov",
            "tokenizer": tokenizer.to_spec(),
            "vocab_size": vocab,
            "dtype": dtype,
            "train_tokens": tokens - n_val,
            "val_tokens": n_val,
            "sha256": hashlib.sha256(stream.tobytes()).hexdigest(),  # of the token stream
            "order": order,
            "entropy_rate": source.entropy_rate(pi),
            "bigram_entropy": source.bigram_entropy(pi),
            "unigram_entropy": source.unigram_entropy(pi),
            "uniform_entropy": float(np.log(vocab)),
            "seed": seed,
            "concentration": concentration,
            "floor": FLOOR,
            "settings": settings or {},
        }
        write_json(tmp / "meta.json", meta)
    return meta


def prepared_settings(data_dir: str | Path) -> dict[str, Any] | None:
    """The settings a data dir was prepared with; None if it holds no dataset, {} if its
    meta.json is unreadable."""
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta.get("settings", {}) if isinstance(meta, dict) else {}


# ---------------------------------------------------------------------------------------
# Reading


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
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split in SPLITS:
        path, tokens = data_dir / f"{split}.bin", meta[f"{split}_tokens"]
        size = path.stat().st_size if path.is_file() else None
        if size != tokens * itemsize:
            found = "is missing" if size is None else f"has {size:,} bytes"
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
    return np.memmap(Path(data_dir) / f"{split}.bin", dtype=_disk_dtype(meta["dtype"]),
                     mode="r")


def load_tokenizer_from_data(data_dir: str | Path) -> Tokenizer:
    return load_tokenizer(read_meta(data_dir)["tokenizer"], data_dir)


def _too_short(n: int, block_size: int) -> StagegptError:
    return StagegptError(f"a split of {n} tokens is too short for block size {block_size} "
                         f"(one window needs {block_size + 1}); lower --block-size or "
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
