"""Tiny fine-tuning data dirs for tests (tests/ is on sys.path through conftest.py).

    write_classify_dir(tmp_path / "cls", [{"text": "a b", "label": "x"}, ...], tokenizer)
    write_instruct_dir(tmp_path / "chat", [{"messages": [...]}, ...], tokenizer)

`records` is one list (used for train, val and test alike) or {"train": [...], "val": [...],
"test": [...]}. The dirs are written by the same code `stagegpt prepare` uses, so they pass
`read_finetune_dir`.
"""

from stagegpt.data.finetune_records import SPLITS, write_finetune_dir


def _splits(records):
    if isinstance(records, dict):
        return {split: list(records.get(split, [])) for split in SPLITS}
    return {split: list(records) for split in SPLITS}


def write_classify_dir(path, records, tokenizer, labels=None, source="test"):
    """A classify dir; `labels` defaults to the records' labels, sorted."""
    splits = _splits(records)
    if labels is None:
        labels = sorted({r["label"] for rs in splits.values() for r in rs})
    meta = {"task": "classify", "source": source, "labels": list(labels)}
    write_finetune_dir(path, meta, splits, tokenizer)
    return path


def write_instruct_dir(path, records, tokenizer, source="test"):
    """An instruct dir of {"messages": [...]} records (optionally with "kind", "answer")."""
    write_finetune_dir(path, {"task": "instruct", "source": source}, _splits(records),
                       tokenizer)
    return path


def chat_record(user, assistant, system=None, **extra):
    """{"messages": [system?, user, assistant], **extra}."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": messages, **extra}
