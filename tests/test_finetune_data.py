"""Fine-tuning data: the data-dir reader and writer, the genre/R8/chat sources (on small
archives built here: no network), and `stagegpt prepare` for them."""

import json

import pytest
from finetune_data import chat_record, write_classify_dir, write_instruct_dir

from stagegpt.data import load_tokenizer_from_data, read_finetune_dir
from stagegpt.data.tokenizers import CharTokenizer
from stagegpt.errors import StagegptError

CHARS = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ?.,'\n")
CLS = [{"text": "a merry jest", "label": "comedy"}, {"text": "a bloody end", "label": "tragedy"}]


def test_classify_dir_round_trips(tmp_path):
    write_classify_dir(tmp_path / "d", {"train": CLS, "val": CLS[:1], "test": []}, CHARS)
    meta, records = read_finetune_dir(tmp_path / "d")
    assert meta["task"] == "classify" and meta["labels"] == ["comedy", "tragedy"]
    assert meta["splits"] == {"train": 2, "val": 1, "test": 0}
    assert records == {"train": CLS, "val": CLS[:1], "test": []}
    assert load_tokenizer_from_data(tmp_path / "d").chars == CHARS.chars


def test_instruct_dir_round_trips(tmp_path):
    recs = [chat_record("Who speaks?", "ROMEO", kind="speaker", answer="ROMEO"),
            chat_record("hi", "hello", system="be brief")]
    write_instruct_dir(tmp_path / "d", recs, CHARS)
    meta, records = read_finetune_dir(tmp_path / "d")
    assert meta["task"] == "instruct" and records["test"] == recs


def _line(tmp_path, line, task="classify"):
    """A valid dir whose train.jsonl's second line is replaced by `line`."""
    d = tmp_path / "d"
    if task == "classify":
        write_classify_dir(d, CLS, CHARS)
    else:
        write_instruct_dir(d, [chat_record("a", "b")] * 2, CHARS)
    lines = (d / "train.jsonl").read_bytes().splitlines(keepends=True)
    lines[1] = line if isinstance(line, bytes) else line.encode() + b"\n"
    (d / "train.jsonl").write_bytes(b"".join(lines))
    return d


def _msgs(*pairs):
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in pairs]})


BAD_LINES = {
    "not json": ("classify", "{text: 1}", "train.jsonl:2: not valid JSON"),
    "not utf-8": ("classify", b'{"text": "\xff", "label": "comedy"}\n', "train.jsonl:2: not UTF-8"),
    "no text": ("classify", '{"label": "comedy"}', "train.jsonl:2: the record has no \"text\""),
    "empty text": ("classify", '{"text": " ", "label": "comedy"}', "\"text\" is empty"),
    "unknown label": ("classify", '{"text": "x", "label": "farce"}', "unknown label 'farce'"),
    "label a number": ("classify", '{"text": "x", "label": 3}', "\"label\" is int, not a string"),
    "extra field": ("classify", '{"text": "x", "label": "comedy", "y": 1}', "unexpected field"),
    "a list": ("classify", "[1]", "must be a JSON object, not list"),
    "huge line": ("classify", b"x" * ((1 << 20) + 5) + b"\n", "longer than 1,048,576 bytes"),
    "no messages": ("instruct", '{"kind": "play"}', "no \"messages\" field"),
    "empty reply": ("instruct", _msgs(("user", "a"), ("assistant", "")), "is empty"),
    "ends with user": ("instruct", _msgs(("user", "a"), ("assistant", "b"), ("user", "c")),
                       "last message must be the assistant"),
    "two users": ("instruct", _msgs(("user", "a"), ("user", "b")), "has role user where "
                  "assistant belongs"),
    "unknown role": ("instruct", _msgs(("bot", "a"), ("assistant", "b")), "roles: system"),
    "kind without answer": ("instruct", json.dumps({**chat_record("a", "b"), "kind": "play"}),
                            "go together"),
    "unknown kind": ("instruct", json.dumps(chat_record("a", "b", kind="x", answer="b")),
                     "unknown kind"),
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_a_bad_record_is_named_by_file_and_line(tmp_path, case):
    task, line, words = BAD_LINES[case]
    d = _line(tmp_path, line, task)
    with pytest.raises(StagegptError, match="train.jsonl:2: ") as err:
        read_finetune_dir(d)
    assert words in str(err.value) and "\n" not in str(err.value)


BAD_META = {
    "task unknown": ({"task": "regress"}, "is not classify or instruct"),
    "one label": ({"labels": ["comedy"]}, "\"labels\" must be a list of 2"),
    "count disagrees": ({"splits": {"train": 3, "val": 2, "test": 2}}, "holds 2 records but"),
    "no val": ({"splits": {"train": 2, "val": 0, "test": 2}}, "need at least one record"),
    "tokenizer lost": ({"tokenizer": {"kind": "bpe", "name": "bpe:300"}}, "is missing"),
}


@pytest.mark.parametrize("case", list(BAD_META))
def test_a_bad_meta_is_refused(tmp_path, case):
    changes, words = BAD_META[case]
    d = write_classify_dir(tmp_path / "d", CLS, CHARS)
    meta = json.loads((d / "meta.json").read_text())
    (d / "meta.json").write_text(json.dumps({**meta, **changes}))
    with pytest.raises(StagegptError, match=words):
        read_finetune_dir(d)


def test_writer_refuses_what_the_reader_would(tmp_path):
    with pytest.raises(StagegptError, match="val record 1: unknown label"):
        write_classify_dir(tmp_path / "d", {"train": CLS, "val": [{"text": "x", "label": "y"}]},
                           CHARS, labels=["comedy", "tragedy"])
    assert not (tmp_path / "d").exists()
