"""Fine-tuning data dirs: records as JSONL text, checked line by line where they enter.

A fine-tuning data dir (written by `stagegpt prepare genre|r8|labels|chat|instruct`) holds

    meta.json                       task ("classify" | "instruct"), source, labels (classify,
                                    in class-id order), record counts per split, the tokenizer
                                    spec, optionally the documents (plays) of each split
    train.jsonl, val.jsonl, test.jsonl   one record per line
    vocab.json | tokenizer.json     the tokenizer's own file (char | bpe), if it has one

A classify record is {"text": str, "label": str}; an instruct record is
{"messages": [{"role", "content"}, ...]} (an optional system message, then user and
assistant in turn, ending with a non-empty assistant message), optionally with "kind" and
"answer" (the exact expected reply, for exact-match scoring). `finetune` tokenizes the text
with its base checkpoint's tokenizer; the tokenizer stored here says what it was prepared for.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stagegpt.data.tokenizers import Tokenizer, load_tokenizer
from stagegpt.errors import StagegptError
from stagegpt.fileio import (
    JSON_ERRORS,
    atomic_dir,
    check_replaceable,
    json_problem,
    read_json,
    write_json,
)

TASKS = ("classify", "instruct")
SPLITS = ("train", "val", "test")
ROLES = ("system", "user", "assistant")
KINDS = ("speaker", "play", "continue")
MAX_LINE_BYTES = 1 << 20      # one record; a passage or a conversation is kilobytes
MAX_RECORDS = 1_000_000       # per file
MAX_LABELS = 1000
MAX_LABEL_CHARS = 100
CLASSIFY_KEYS = {"text", "label"}
INSTRUCT_KEYS = {"messages", "kind", "answer"}


def iter_jsonl(path: Path, max_records: int | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) for each non-blank line of a UTF-8 JSONL file, with a
    one-line error naming path:line for a line that is too long, not UTF-8 or not JSON, or
    past `max_records` (default MAX_RECORDS) records."""
    max_records = MAX_RECORDS if max_records is None else max_records
    count = 0
    if not Path(path).is_file():
        raise StagegptError(f"{path} is not a file; give the path of a JSONL file")
    try:
        f = open(path, "rb")  # a generator holds it open; `with f` closes it
    except OSError as err:
        raise StagegptError(f"cannot read {path}: {err.strerror}") from None
    with f:
        for number, raw in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), 1):
            where = f"{path}:{number}"
            if len(raw) > MAX_LINE_BYTES:
                raise StagegptError(f"{where}: the line is longer than {MAX_LINE_BYTES:,} bytes; "
                                    "split the record or shorten it")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise StagegptError(f"{where}: not UTF-8 (byte 0x{raw[err.start]:02x}); convert "
                                    "the file to UTF-8 (e.g. with iconv)") from None
            line = line.removeprefix("\ufeff") if number == 1 else line
            if not line.strip():
                continue
            count += 1
            if count > max_records:
                raise StagegptError(f"{where}: more than {max_records:,} records; split the "
                                    "file or keep a sample of it")
            try:
                record = json.loads(line)
            except JSON_ERRORS as err:
                reason = json_problem(err)
                raise StagegptError(f"{where}: not valid JSON ({reason}); write one JSON "
                                    "object per line") from None
            if not encodes(record):
                raise StagegptError(f"{where}: a string holds a lone surrogate (an escape such "
                                    "as \\ud800 without its pair), which is not text; fix or "
                                    "drop the record")
            yield number, record


def encodes(record: Any) -> bool:
    """Whether every string in a parsed JSON value is text UTF-8 can encode: JSON's \\u
    escapes can name half of a surrogate pair, which no text file can hold."""
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _string(value: Any, name: str, where: str, empty_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise StagegptError(f"{where}: \"{name}\" is {type(value).__name__}, not a string")
    if not empty_ok and not value.strip():
        raise StagegptError(f"{where}: \"{name}\" is empty; every record needs some text here")
    return value


def _known_keys(record: Any, allowed: set[str], required: set[str], where: str) -> dict:
    if not isinstance(record, dict):
        raise StagegptError(f"{where}: a record must be a JSON object, not "
                            f"{type(record).__name__}")
    missing = sorted(required - set(record))
    if missing:
        raise StagegptError(f"{where}: the record has no \"{missing[0]}\" field; expected "
                            f"{', '.join(sorted(allowed))}")
    extra = sorted(set(record) - allowed)
    if extra:
        raise StagegptError(f"{where}: unexpected field \"{extra[0]:.40}\"; a record holds only "
                            f"{', '.join(sorted(allowed))}")
    return record


def check_classify_record(record: Any, labels: list[str], where: str) -> dict[str, str]:
    """{"text", "label"} with non-empty text and a label from `labels`."""
    _known_keys(record, CLASSIFY_KEYS, CLASSIFY_KEYS, where)
    _string(record["text"], "text", where)
    label = _string(record["label"], "label", where)
    if label not in labels:
        raise StagegptError(f"{where}: unknown label {label!r:.60}; the labels are "
                            f"{', '.join(labels)[:200]}")
    return record


def check_messages(messages: Any, where: str) -> list[dict[str, str]]:
    """An optional system message, then user/assistant in turn, ending with the assistant;
    every content a non-empty string (the system prompt may be empty)."""
    if not isinstance(messages, list) or not messages:
        raise StagegptError(f"{where}: \"messages\" must be a non-empty list of "
                            "{\"role\", \"content\"} objects")
    start = 1 if isinstance(messages[0], dict) and messages[0].get("role") == "system" else 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise StagegptError(f"{where}: message {i} must be an object with exactly "
                                "\"role\" and \"content\"")
        role = message["role"]
        expected = "system" if i < start else ("user", "assistant")[(i - start) % 2]
        if role != expected:
            shown = role if role in ROLES else f"{role!r:.30} (roles: {', '.join(ROLES)})"
            raise StagegptError(f"{where}: message {i} has role {shown} where {expected} "
                                "belongs; after an optional system message, user and "
                                "assistant take turns")
        _string(message["content"], f"content of message {i}", where, empty_ok=i < start)
    if len(messages) == start or messages[-1]["role"] != "assistant":
        raise StagegptError(f"{where}: the last message must be the assistant's reply "
                            "(the response the model learns)")
    return messages


def check_instruct_record(record: Any, where: str) -> dict[str, Any]:
    """{"messages": [...]} plus, optionally together, "kind" and "answer"."""
    _known_keys(record, INSTRUCT_KEYS, {"messages"}, where)
    check_messages(record["messages"], where)
    if ("kind" in record) != ("answer" in record):
        raise StagegptError(f"{where}: \"kind\" and \"answer\" go together; give both or "
                            "neither")
    if "kind" in record:
        if record["kind"] not in KINDS:
            raise StagegptError(f"{where}: unknown kind {record['kind']!r:.40}; use "
                                f"{', '.join(KINDS)}")
        _string(record["answer"], "answer", where)
    return record


def check_labels(labels: Any, where: str) -> list[str]:
    if (not isinstance(labels, list) or not 2 <= len(labels) <= MAX_LABELS
            or not all(isinstance(x, str) and x.strip() and len(x) <= MAX_LABEL_CHARS
                       and "\n" not in x for x in labels)
            or len(set(labels)) != len(labels)):
        raise StagegptError(f"{where}: \"labels\" must be a list of 2 to {MAX_LABELS} distinct, "
                            f"non-empty one-line names of at most {MAX_LABEL_CHARS} characters")
    return labels


def read_finetune_meta(data_dir: str | Path) -> dict[str, Any]:
    """meta.json of a fine-tuning data dir, its fields checked (not yet the records)."""
    data_dir = Path(data_dir)
    path = data_dir / "meta.json"
    if not path.is_file():
        raise StagegptError(f"{data_dir} has no meta.json, so it is not a prepared data dir; "
                            "create it with `stagegpt prepare genre|r8|chat|labels|instruct`")
    meta = read_json(path, "data meta file")
    if not isinstance(meta, dict) or meta.get("task") not in TASKS:
        task = meta.get("task") if isinstance(meta, dict) else None
        raise StagegptError(f"{path}: task {task!r:.40} is not classify or instruct; this is "
                            "not a fine-tuning data dir (prepare one with `stagegpt prepare "
                            "genre|r8|chat|labels|instruct`)")
    for key in ("source", "stagegpt_version"):
        if not isinstance(meta.get(key), str):
            raise StagegptError(f"{path}: \"{key}\" must be a string; prepare the data again")
    splits = meta.get("splits")
    if (not isinstance(splits, dict) or set(splits) != set(SPLITS) or not all(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_RECORDS
            for n in splits.values())):
        raise StagegptError(f"{path}: \"splits\" must give a record count for each of "
                            f"{', '.join(SPLITS)}; prepare the data again")
    if splits["train"] < 1 or splits["val"] < 1:
        raise StagegptError(f"{path}: the train and val splits need at least one record each")
    if not isinstance(meta.get("tokenizer"), dict):
        raise StagegptError(f"{path}: \"tokenizer\" must be a tokenizer spec; prepare the "
                            "data again")
    if meta["task"] == "classify":
        check_labels(meta.get("labels"), str(path))
    documents = meta.get("documents", {})
    if not isinstance(documents, dict) or not all(
            isinstance(v, list) and all(isinstance(d, str) for d in v)
            for v in documents.values()):
        raise StagegptError(f"{path}: \"documents\" must map splits to lists of names")
    return meta


def tokenizer_of_finetune_dir(data_dir: str | Path) -> Tokenizer:
    return load_tokenizer(read_finetune_meta(data_dir)["tokenizer"], data_dir)


def check_record(record: Any, meta: dict[str, Any], where: str) -> dict[str, Any]:
    if meta["task"] == "classify":
        return check_classify_record(record, meta["labels"], where)
    return check_instruct_record(record, where)


def read_finetune_split(data_dir: str | Path, split: str, meta: dict[str, Any] | None = None
               ) -> list[dict[str, Any]]:
    """The checked records of one split, as many as meta.json says."""
    if split not in SPLITS:
        raise StagegptError(f"unknown split {split!r}; use {', '.join(SPLITS)}", "split")
    meta = read_finetune_meta(data_dir) if meta is None else meta
    path = Path(data_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise StagegptError(f"{path} is missing; the data dir is damaged, prepare it again")
    expected = meta["splits"][split]
    records = [check_record(record, meta, f"{path}:{number}")
               for number, record in iter_jsonl(path, max_records=expected + 1)]
    if len(records) != expected:
        raise StagegptError(f"{path} holds {len(records):,} records but meta.json says "
                            f"{expected:,}; the data dir is damaged, prepare it again")
    return records


def records_sha256(data_dir: str | Path) -> str:
    """A fingerprint of the records: sha256 over train.jsonl, val.jsonl and test.jsonl."""
    digest = hashlib.sha256()
    for split in SPLITS:
        with open(Path(data_dir) / f"{split}.jsonl", "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def read_finetune_dir(data_dir: str | Path) -> tuple[dict[str, Any], dict[str, list[dict]]]:
    """(meta, {split: records}) of a fine-tuning data dir, everything checked: meta.json's
    fields, the tokenizer's files, every record (errors name file:line)."""
    meta = read_finetune_meta(data_dir)
    load_tokenizer(meta["tokenizer"], data_dir)
    return meta, {split: read_finetune_split(data_dir, split, meta) for split in SPLITS}


def write_finetune_dir(out: str | Path, meta: dict[str, Any],
                       splits: dict[str, list[dict[str, Any]]], tokenizer: Tokenizer,
                       overwrite: bool = False) -> dict[str, Any]:
    """Write meta.json (with the counts and tokenizer spec filled in), the three JSONL
    files and the tokenizer's files into `out`, replaced as a whole or not at all (an
    existing, non-empty `out` only with `overwrite=True`). Every record is checked first,
    exactly as `read_finetune_dir` will check it. Returns the meta written."""
    from stagegpt import __version__

    check_replaceable(out, overwrite)
    meta = {"stagegpt_version": __version__, **meta,
            "splits": {s: len(splits[s]) for s in SPLITS}, "tokenizer": tokenizer.to_spec()}
    if meta["task"] == "classify":
        check_labels(meta.get("labels"), "labels")
    lines = {}
    for split in SPLITS:
        lines[split] = []
        for i, record in enumerate(splits[split], 1):
            check_record(record, meta, f"{split} record {i}")
            lines[split].append(json.dumps(record, ensure_ascii=False) + "\n")
            if len(lines[split][-1].encode("utf-8")) > MAX_LINE_BYTES:
                raise StagegptError(f"{split} record {i} is longer than {MAX_LINE_BYTES:,} "
                                    "bytes as JSON; shorten it")
    with atomic_dir(out) as tmp:
        for split in SPLITS:
            with open(tmp / f"{split}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(lines[split])
        tokenizer.save(tmp)
        write_json(tmp / "meta.json", meta)
    return meta
