"""Writing a data dir: text (or a Markov source) -> tokenizer -> train.bin, val.bin, meta.json.

The layout is described in `stagegpt.data.datasets`, which reads it back. A data dir is
written with `atomic_dir`: replaced as a whole, or left untouched on error.
"""

from __future__ import annotations

import hashlib
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from stagegpt.data.corpora import Corpus
from stagegpt.data.datasets import disk_dtype, dtype_for_vocab
from stagegpt.data.markov import FLOOR, MarkovSource, markov_alphabet
from stagegpt.data.tokenizers import CharTokenizer, Tokenizer, get_tokenizer
from stagegpt.errors import StagegptError
from stagegpt.fileio import atomic_dir, check_replaceable, read_json, write_json
from stagegpt.limits import check_fits

# Each split must hold at least one training window: a 64-token context (the `small`
# preset) plus the target after it. Models with longer contexts need more; the trainer
# checks its own block size against the split.
DEFAULT_MIN_VAL_TOKENS = 65


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
            f.write(ids.astype(disk_dtype(dtype)).tobytes())  # a full disk raises ENOSPC
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
                   progress: bool = True,
                   overwrite: bool = False) -> tuple[dict[str, Any], dict[str, float]]:
    """Tokenize a corpus into `out` (replaced as a whole, or left untouched on error).

    A char vocabulary covers train and val; a bpe tokenizer is trained on train only.
    An existing `out` is replaced only with `overwrite=True`.
    Returns (meta, stats) where stats has the tokenization "seconds" and "bytes".
    """
    check_replaceable(out, overwrite)
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
                   min_val_tokens: int = DEFAULT_MIN_VAL_TOKENS,
                   overwrite: bool = False) -> dict[str, Any]:
    """Sample `tokens` ids from a random order-`order` Markov source into `out`; the last
    `val_fraction` of the stream is val. meta.json gets the source's exact entropies.
    An existing `out` is replaced only with `overwrite=True`."""
    check_replaceable(out, overwrite)
    if not 0.0 < val_fraction < 1.0:
        raise StagegptError(f"val_fraction must be between 0 and 1, got {val_fraction}",
                            "val_fraction")
    if not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise StagegptError(f"seed must be an integer in [0, 2**63), got {seed!r}", "seed")
    if not isinstance(tokens, int) or tokens < 1:
        raise StagegptError(f"tokens must be a positive integer, got {tokens!r}", "tokens")
    check_fits(16 * tokens, f"sampling {tokens:,} Markov tokens", "ask for fewer tokens",
               "tokens")
    n_val = int(round(tokens * val_fraction))
    _check_split_sizes({"train": tokens - n_val, "val": n_val}, min_val_tokens,
                       "raise --tokens or --val-fraction")
    source = MarkovSource.random(order, vocab, seed, concentration)
    pi = source.stationary()
    ids = source.sample(tokens, seed, pi)
    tokenizer = CharTokenizer(markov_alphabet(vocab))
    dtype = dtype_for_vocab(vocab)
    stream = ids.astype(disk_dtype(dtype))
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
    try:  # bounded: a meta.json that is /dev/zero, a FIFO or huge is unreadable, not read
        meta = read_json(path, "data meta file")
    except StagegptError:
        return {}
    return meta.get("settings", {}) if isinstance(meta, dict) else {}


