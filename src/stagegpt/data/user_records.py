"""A user's own fine-tuning data: labelled texts (CSV or JSONL) and instructions (JSONL).

    labels    FILE.csv with a header row holding "text" and "label" columns (others are
              ignored), or FILE.jsonl of {"text": ..., "label": ...} (other fields ignored);
              a label may be a string or an integer; `labels` (if given) lists the allowed
              labels in class-id order, otherwise they are the distinct labels, sorted.
    instruct  FILE.jsonl of {"messages": [...]} (as in a fine-tuning dir) or Alpaca records
              {"instruction", "input" (optional), "output"}, which become one user message
              (instruction, plus a blank line and the input when there is one) and the
              assistant's output.

Everything is checked where it enters: a bad record stops the run with one line naming
FILE:LINE (a missing field, empty text or output, an unknown or empty label, bad JSON,
bytes that are not UTF-8, a line over 1 MiB, more than 1,000,000 records). The distinct
inputs (texts, or instructions) are shuffled with the seed and `test_fraction`, then
`val_fraction`, of them held out, each with every record that repeats it.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stagegpt.data import finetune_records
from stagegpt.data.finetune_prepare import prepare_finetune, split_by_key
from stagegpt.data.finetune_records import (
    MAX_LABEL_CHARS,
    MAX_LABELS,
    MAX_LINE_BYTES,
    check_instruct_record,
    check_labels,
    iter_jsonl,
)
from stagegpt.errors import StagegptError

LABEL_SUFFIXES = (".csv", ".jsonl")


def _lines(path: Path) -> Iterator[str]:
    """The file's lines decoded as UTF-8, each at most MAX_LINE_BYTES (errors name the line)."""
    with open(path, "rb") as f:
        for number, raw in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), 1):
            if len(raw) > MAX_LINE_BYTES:
                raise StagegptError(f"{path}:{number}: the line is longer than "
                                    f"{MAX_LINE_BYTES:,} bytes; shorten the record")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise StagegptError(f"{path}:{number}: not UTF-8 (byte 0x{raw[err.start]:02x}); "
                                    "convert the file to UTF-8 (e.g. with iconv)") from None
            yield line.removeprefix("\ufeff") if number == 1 else line


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    # csv's own limit on a field (128 KiB) would refuse lines the 1 MiB line limit allows
    csv.field_size_limit(max(csv.field_size_limit(), MAX_LINE_BYTES))
    reader = csv.reader(_lines(path))
    try:
        header = next(reader, None)
        if header is None or not {"text", "label"} <= {h.strip() for h in header}:
            raise StagegptError(f"{path}:1: the header row must name a \"text\" and a "
                                "\"label\" column")
        columns = {h.strip(): i for i, h in enumerate(header)}
        count = 0
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            count += 1
            if count > finetune_records.MAX_RECORDS:
                raise StagegptError(f"{path}:{reader.line_num}: more than "
                                    f"{finetune_records.MAX_RECORDS:,} records; keep a sample "
                                    "of the file")
            if len(row) != len(header):
                raise StagegptError(f"{path}:{reader.line_num}: {len(row)} fields where the "
                                    f"header has {len(header)}")
            yield reader.line_num, {k: row[i] for k, i in columns.items()}
    except csv.Error as err:
        raise StagegptError(f"{path}:{reader.line_num}: not valid CSV ({err})") from None


def _label(value: Any, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise StagegptError(f"{where}: \"label\" is {type(value).__name__}; give a string or "
                            "an integer")
    value = value.strip()
    if not value:
        raise StagegptError(f"{where}: the label is empty; every text needs a label")
    if len(value) > MAX_LABEL_CHARS or "\n" in value:
        raise StagegptError(f"{where}: the label {value[:40]!r}... is not a one-line name of "
                            f"at most {MAX_LABEL_CHARS} characters; shorten it")
    return value


def read_labelled(path: str | Path, labels: list[str] | None = None
                  ) -> tuple[list[str], list[dict[str, str]]]:
    """(labels in class-id order, [{"text", "label"}]) from a CSV or JSONL file."""
    path = Path(path)
    if path.suffix.lower() not in LABEL_SUFFIXES:
        raise StagegptError(f"{path}: give a .csv (text,label columns) or .jsonl file")
    if not path.is_file():
        raise StagegptError(f"{path} is not a file; give the path of your data file")
    if labels is not None:
        try:
            check_labels(labels, "labels")
        except StagegptError:
            raise StagegptError(f"labels must be 2 to {MAX_LABELS} distinct, non-empty names "
                                f"(got {labels!r:.80})", "labels") from None
    rows = _csv_rows(path) if path.suffix.lower() == ".csv" else iter_jsonl(path)
    records, found = [], set()
    for number, row in rows:
        where = f"{path}:{number}"
        if not isinstance(row, dict):
            raise StagegptError(f"{where}: a record must be a JSON object with \"text\" and "
                                "\"label\"")
        for field in ("text", "label"):
            if field not in row:
                raise StagegptError(f"{where}: the record has no \"{field}\" field")
        text, label = row["text"], _label(row["label"], where)
        if not isinstance(text, str) or not text.strip():
            raise StagegptError(f"{where}: the text is empty or not a string")
        if labels is not None and label not in labels:
            raise StagegptError(f"{where}: unknown label {label!r:.60}; --labels allows "
                                f"{', '.join(labels)[:200]}")
        found.add(label)
        if len(found) > MAX_LABELS:
            raise StagegptError(f"{where}: a label past the {MAX_LABELS:,} distinct labels a "
                                "classifier can have; is the label column the right one?")
        records.append({"text": text, "label": label})
    found = sorted(found)
    if labels is None and len(found) < 2:
        raise StagegptError(f"{path}: {len(records)} records with {len(found)} distinct label"
                            f"{'s' if len(found) != 1 else ''}; classification needs at least 2")
    return (labels if labels is not None else found), records


def _alpaca(record: dict[str, Any], where: str) -> dict[str, Any]:
    for field in ("instruction", "output"):
        if not isinstance(record.get(field), str) or not record[field].strip():
            state = "missing" if field not in record else "empty or not a string"
            raise StagegptError(f"{where}: \"{field}\" is {state}; an Alpaca record needs a "
                                "non-empty instruction and output")
    extra = record.get("input", "")
    if not isinstance(extra, str):
        raise StagegptError(f"{where}: \"input\" is {type(extra).__name__}, not a string")
    user = record["instruction"] + (f"\n\n{extra}" if extra.strip() else "")
    return {"messages": [{"role": "user", "content": user},
                         {"role": "assistant", "content": record["output"]}]}


def read_instructions(path: str | Path) -> list[dict[str, Any]]:
    """Instruct records ({"messages": ...}) from a JSONL file of messages or Alpaca records."""
    path = Path(path)
    if path.suffix.lower() != ".jsonl":
        raise StagegptError(f"{path}: give a .jsonl file of {{\"messages\"}} or "
                            "{\"instruction\", \"input\", \"output\"} records")
    records = []
    for number, record in iter_jsonl(path):
        where = f"{path}:{number}"
        if not isinstance(record, dict):
            raise StagegptError(f"{where}: a record must be a JSON object")
        if "messages" in record:
            records.append(check_instruct_record(
                {k: v for k, v in record.items() if k in ("messages", "kind", "answer")}, where))
        elif "instruction" in record or "output" in record:
            records.append(_alpaca(record, where))
        else:
            raise StagegptError(f"{where}: the record has neither \"messages\" nor "
                                "\"instruction\" and \"output\"")
    return records


def split_records(records: list[dict], seed: int, val_fraction: float, test_fraction: float,
                  path: Path) -> dict[str, list[dict]]:
    """test_fraction, then val_fraction, of the distinct inputs held out, chosen with `seed`:
    every copy of a text (or an instruction) lands in the same split, so none is tested on
    what it trained on."""
    keyed = [(model_input(record), record) for record in records]
    splits = split_by_key(keyed, seed, val_fraction, test_fraction)
    if not splits["train"]:
        distinct = len({key for key, _ in keyed})
        raise StagegptError(f"{path} has {len(records)} records ({distinct} distinct), too few "
                            "to hold out val and test and keep some to train on; give more "
                            "records")
    return splits


def model_input(record: dict[str, Any]) -> str:
    """What the model is given: a labelled text, or an instruction's turns but the replies."""
    if "text" in record:
        return record["text"]
    return "\n".join(m["content"] for m in record["messages"] if m["role"] != "assistant")


def prepare_user_file(out: str | Path, kind: str, path: str | Path, tokenizer: str,
                      labels: list[str] | None = None, seed: int = 0,
                      val_fraction: float = 0.1, test_fraction: float = 0.1,
                      unknown_chars: str | None = None, overwrite: bool = False,
                      progress: bool = True, settings: dict[str, Any] | None = None
                      ) -> dict[str, Any]:
    """`kind` "labels" or "instruct": the user's file as a fine-tuning dir; its meta."""
    path = Path(path)
    meta: dict[str, Any] = {"source": f"{kind}:{path.name}", "settings": settings or {}}
    if kind == "labels":
        meta["labels"], records = read_labelled(path, labels)
        meta["task"] = "classify"
    elif kind == "instruct":
        records, meta["task"] = read_instructions(path), "instruct"
    else:
        raise StagegptError(f"kind must be labels or instruct, not {kind!r}", "kind")
    splits = split_records(records, seed, val_fraction, test_fraction, path)
    return prepare_finetune(out, meta, splits, tokenizer, unknown_chars, overwrite, progress)
