"""From records to a fine-tuning data dir: the tokenizer, unknown characters, length stats.

Every `stagegpt prepare genre|r8|chat|labels|instruct` ends in `prepare_finetune`:

1. the tokenizer: gpt2, char (the characters of all records), bpe:N (trained on the
   train records), or from:DIR, reusing the tokenizer of a checkpoint dir, a run dir
   (its newest step checkpoint, else best/) or a data dir: the usual choice when the
   data is for fine-tuning a pretrained model;
2. with a char tokenizer, characters its vocabulary lacks are counted and refused unless
   `unknown_chars` says "drop" (remove them) or "replace" (each becomes a space); a record
   left with no text is dropped;
3. token lengths per split (max and median; an instruct record counts its messages'
   contents, not the template finetune wraps them in) go into meta.json and the report,
   with, for a from:DIR checkpoint, how many records are longer than its block size.
"""

from __future__ import annotations

import random
import re
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from stagegpt.data.datasets import load_tokenizer_from_data
from stagegpt.data.finetune_records import SPLITS, write_finetune_dir
from stagegpt.data.tokenizers import (
    CharTokenizer,
    Tokenizer,
    check_tokenizer_name,
    get_tokenizer,
    load_tokenizer,
)
from stagegpt.errors import StagegptError
from stagegpt.fileio import check_replaceable, read_json, readable_dir

UNKNOWN_CHARS = ("drop", "replace")
REPLACEMENT = " "  # what --unknown-chars replace puts in place of an unknown character
_STEP_DIR = re.compile(r"^step_(\d+)$")


def check_tokenizer_choice(name: str) -> str:
    """gpt2, char, bpe:N or from:DIR."""
    if name.startswith("from:"):
        if not name[5:]:
            raise StagegptError("tokenizer from: needs a directory, e.g. from:runs/char",
                                "tokenizer")
        return name
    return check_tokenizer_name(name)


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """val_fraction in (0, 1), test_fraction in [0, 1), together below 1 (NaN fails)."""
    if not 0.0 < val_fraction < 1.0:
        raise StagegptError(f"val_fraction ({val_fraction}) must be in (0, 1)", "val_fraction")
    if not (0.0 <= test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
        raise StagegptError(f"test_fraction ({test_fraction}) must be in [0, 1) and, with the "
                            f"val fraction ({val_fraction}), together below 1", "test_fraction")


def split_by_key(items: list[tuple[str, dict]], seed: int, val_fraction: float,
                 test_fraction: float) -> dict[str, list[dict]]:
    """Items grouped by key, the groups shuffled with `seed` and dealt into test, val and
    train by the fractions: one key never spans two splits."""
    check_fractions(val_fraction, test_fraction)
    keys = sorted({key for key, _ in items})
    random.Random(seed).shuffle(keys)
    n_test, n_val = round(len(keys) * test_fraction), max(1, round(len(keys) * val_fraction))
    where = {k: "test" if i < n_test else "val" if i < n_test + n_val else "train"
             for i, k in enumerate(keys)}
    splits: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for key, item in items:
        splits[where[key]].append(item)
    return splits


def _checkpoint_in(directory: Path) -> Path | None:
    """`directory` if it is a checkpoint, else a run dir's newest step checkpoint or best/."""
    if (directory / "config.json").is_file():
        return directory
    root = directory / "checkpoints"
    steps = sorted((int(m.group(1)), p) for p in (root.iterdir() if root.is_dir() else [])
                   if (m := _STEP_DIR.match(p.name)) and (p / "config.json").is_file())
    if steps:
        return steps[-1][1]
    best = readable_dir(directory / "best")
    return best if (best / "config.json").is_file() else None


def tokenizer_from_dir(path: str | Path) -> Tokenizer:
    """The tokenizer stored in a checkpoint dir, a run dir or a (token-bin or fine-tuning)
    data dir."""
    directory = readable_dir(Path(path))
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "no such directory"
        raise StagegptError(f"tokenizer from:{path}: {what}; give a checkpoint, run or data dir")
    checkpoint = _checkpoint_in(directory)
    if checkpoint is not None:
        config = read_json(checkpoint / "config.json", "checkpoint config")
        spec = config.get("tokenizer") if isinstance(config, dict) else None
        if spec is None:
            raise StagegptError(f"the checkpoint {checkpoint} stores no tokenizer; give "
                                "--tokenizer gpt2, char or bpe:N instead")
        return load_tokenizer(spec, checkpoint)
    if (directory / "meta.json").is_file():
        return load_tokenizer_from_data(directory)
    raise StagegptError(f"tokenizer from:{path}: {directory} is not a checkpoint, run or data "
                        "dir (no config.json, checkpoints/ or meta.json)")


def record_texts(record: dict[str, Any]) -> list[str]:
    """The strings of a record a tokenizer will see."""
    if "text" in record:
        return [record["text"]]
    return [m["content"] for m in record["messages"]]


def all_texts(record: dict[str, Any]) -> list[str]:
    """`record_texts` and an exact "answer" (unless it is the reply itself, so as not to
    count its characters twice): every string finetune encodes."""
    texts = record_texts(record)
    answer = record.get("answer")
    return texts + [answer] if answer is not None and answer != texts[-1] else texts


def build_tokenizer(name: str, splits: dict[str, list[dict]], progress: bool) -> Tokenizer:
    if check_tokenizer_choice(name).startswith("from:"):
        return tokenizer_from_dir(name[5:])
    if name == "char":
        return CharTokenizer.from_text(t for rs in splits.values() for r in rs
                                       for t in all_texts(r))
    train_text = "\n".join(t for r in splits["train"] for t in record_texts(r))
    return get_tokenizer(name, train_text, progress=progress and sys.stderr.isatty())


def _map_record(record: dict[str, Any], fix: Any) -> dict[str, Any] | None:
    """`record` with `fix` applied to its strings; None if a text becomes empty."""
    if "text" in record:
        text = fix(record["text"])
        return {**record, "text": text} if text.strip() else None
    messages = [{**m, "content": fix(m["content"])} for m in record["messages"]]
    if any(not m["content"].strip() for m in messages if m["role"] != "system"):
        return None
    mapped = {**record, "messages": messages}
    if "answer" in record:
        mapped["answer"] = fix(record["answer"])
        if not mapped["answer"].strip():
            return None
    return mapped


def handle_unknown_chars(splits: dict[str, list[dict]], tokenizer: Tokenizer,
                         unknown_chars: str | None) -> tuple[dict[str, list[dict]], dict]:
    """With a char tokenizer: refuse, drop or replace characters outside its vocabulary.
    Returns (records, report) where report has the unknown characters' "count", a few
    "examples" and the "dropped_records" that had nothing left."""
    if unknown_chars not in (None, *UNKNOWN_CHARS):
        raise StagegptError(f"unknown_chars must be drop or replace, not {unknown_chars!r}",
                            "unknown_chars")
    if not isinstance(tokenizer, CharTokenizer):
        return splits, {"count": 0, "examples": [], "dropped_records": 0}
    vocab = set(tokenizer.chars)
    unknown = Counter(c for rs in splits.values() for r in rs for t in all_texts(r)
                      for c in t if c not in vocab)
    examples = [f"{c!r} (U+{ord(c):04X}) x{n}" for c, n in unknown.most_common(5)]
    report = {"count": sum(unknown.values()), "examples": examples, "dropped_records": 0}
    if not unknown:
        return splits, report
    if unknown_chars is None:
        raise StagegptError(f"unknown_chars: {report['count']:,} characters of the records are "
                            f"not in the char tokenizer's vocabulary of {tokenizer.vocab_size} "
                            f"({', '.join(examples)}); choose drop (remove them) or replace "
                            "(each becomes a space)", "unknown_chars")
    if unknown_chars == "replace" and REPLACEMENT not in vocab:
        raise StagegptError("unknown_chars: replace needs a space in the char vocabulary and "
                            "this one has none; use drop", "unknown_chars")
    table = {ord(c): (REPLACEMENT if unknown_chars == "replace" else None) for c in unknown}
    mapped = {}
    for split, records in splits.items():
        kept = [_map_record(r, lambda s: s.translate(table)) for r in records]
        mapped[split] = [r for r in kept if r is not None]
        report["dropped_records"] += len(records) - len(mapped[split])
    return mapped, report


def base_context(tokenizer: str) -> int | None:
    """The block size of the checkpoint a from:DIR tokenizer comes from (None for others)."""
    if not tokenizer.startswith("from:"):
        return None
    checkpoint = _checkpoint_in(readable_dir(Path(tokenizer[5:])))
    if checkpoint is None:
        return None
    config = read_json(checkpoint / "config.json", "checkpoint config")
    model = config.get("model") if isinstance(config, dict) else None
    block = model.get("block_size") if isinstance(model, dict) else None
    return block if isinstance(block, int) and not isinstance(block, bool) else None


def token_lengths(splits: dict[str, list[dict]], tokenizer: Tokenizer,
                  context: int | None = None) -> dict[str, dict]:
    """{split: {"max", "median"}} of the records' token counts (contents only), and with
    a `context`, "longer": how many records have more tokens than it."""
    stats = {}
    for split, records in splits.items():
        texts = ["\n".join(record_texts(r)) for r in records]
        counts = ([len(t) for t in texts] if isinstance(tokenizer, CharTokenizer)
                  else [len(ids) for ids in tokenizer.encode_batch(texts)])
        stats[split] = {"max": max(counts, default=0),
                        "median": int(statistics.median(counts)) if counts else 0}
        if context is not None:
            stats[split]["longer"] = sum(n > context for n in counts)
    return stats


def label_counts(splits: dict[str, list[dict]]) -> dict[str, dict[str, int]]:
    return {split: dict(sorted(Counter(r["label"] for r in records).items()))
            for split, records in splits.items()}


def _check_kept(splits: dict[str, list[dict]]) -> None:
    for split in ("train", "val"):
        if not splits[split]:
            raise StagegptError(f"the {split} split has no records; give more data or a larger "
                                "split fraction")


def prepare_finetune(out: str | Path, meta: dict[str, Any], splits: dict[str, list[dict]],
                     tokenizer: str, unknown_chars: str | None = None,
                     overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Write `splits` ({"train", "val", "test"}: records) with `meta` (task, source, labels,
    documents, settings) to `out`; returns the meta.json written, with "token_lengths",
    "unknown_chars", "base_block_size" and, for classify, "label_counts" added."""
    check_replaceable(out, overwrite)
    _check_kept(splits)  # before a char vocabulary is built from no text
    tok = build_tokenizer(tokenizer, splits, progress)
    splits, unknown = handle_unknown_chars(splits, tok, unknown_chars)
    _check_kept(splits)
    context = base_context(tokenizer)
    meta = {**meta, "tokenizer_choice": tokenizer, "unknown_chars": unknown,
            "base_block_size": context, "token_lengths": token_lengths(splits, tok, context)}
    if meta["task"] == "classify":
        meta["label_counts"] = label_counts(splits)
    return write_finetune_dir(out, meta, {s: splits[s] for s in SPLITS}, tok, overwrite=True)
