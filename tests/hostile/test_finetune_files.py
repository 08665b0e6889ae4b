"""A user's own fine-tuning files, broken in every way we can name: `stagegpt prepare labels`
and `prepare instruct` refuse each with one line naming FILE:LINE (or the flag), exit 2,
and write nothing."""

import json

import pytest
from world import assert_refused

from stagegpt.data import finetune_records


def jl(*records):
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


GOOD = [{"text": f"text {i}", "label": "ab"[i % 2]} for i in range(10)]
CHAT = [{"instruction": f"say {i}", "output": f"{i}"} for i in range(10)]

LABELS = {  # name: (file name, contents, extra flags, expected message)
    "csv without a label column": ("d.csv", "id,text\n1,a\n", [], r"d\.csv:1: the header row "
                                   "must name a \"text\" and a \"label\" column"),
    "csv row of three fields": ("d.csv", "text,label\na,b,c\n", [], r"d\.csv:2: 3 fields"),
    "csv empty text": ("d.csv", 'text,label\n" ",a\n', [], r"d\.csv:2: the text is empty"),
    "csv empty label": ("d.csv", "text,label\nhello,\n", [], r"d\.csv:2: the label is empty"),
    "csv not utf-8": ("d.csv", b"text,label\n\xff,a\n", [], r"d\.csv:2: not UTF-8 \(byte 0xff\)"),
    "jsonl not utf-8": ("d.jsonl", jl(GOOD[0]).encode() + b'{"text": "\xe9"}\n', [],
                        r"d\.jsonl:2: not UTF-8"),
    "jsonl bad json": ("d.jsonl", jl(GOOD[0], "{text: 1}"), [], r"d\.jsonl:2: not valid JSON"),
    "jsonl a list": ("d.jsonl", jl(GOOD[0], [1, 2]), [], r"d\.jsonl:2: a record must be a JSON"),
    "jsonl no label": ("d.jsonl", jl(GOOD[0], {"text": "x"}), [],
                       r"d\.jsonl:2: the record has no \"label\" field"),
    "jsonl no text": ("d.jsonl", jl({"label": "a"}), [], r"d\.jsonl:1: the record has no "
                      "\"text\""),
    "jsonl label a list": ("d.jsonl", jl({"text": "x", "label": ["a"]}), [],
                           r"d\.jsonl:1: \"label\" is list"),
    "jsonl empty label": ("d.jsonl", jl({"text": "x", "label": " "}), [], "label is empty"),
    "unknown label": ("d.jsonl", jl(*GOOD[:3], {"text": "x", "label": "c"}),
                      ["--labels", "a,b"], r"d\.jsonl:4: unknown label 'c'; --labels allows a, b"),
    "one label only": ("d.jsonl", jl(*GOOD[::2]), [], r"5 records with 1 distinct label; "
                       "classification needs at least 2"),
    "huge line": ("d.jsonl", jl(GOOD[0], "x" * (1 << 20)), [], r"d\.jsonl:2: the line is "
                  "longer than 1,048,576 bytes"),
    "csv huge line": ("d.csv", "text,label\n" + "x" * (1 << 20) + ",a\n", [],
                      r"d\.csv:2: the line is longer"),
    "a text file": ("d.txt", "text,label\n", [], r"give a \.csv \(text,label columns\) or "
                    r"\.jsonl file"),
    "too few records": ("d.jsonl", jl(*GOOD[:2]), ["--test-fraction", "0.5"],
                        r"has 2 records \(2 distinct\), too few"),
    "bad --labels": ("d.jsonl", jl(*GOOD), ["--labels", "a"], r"--labels must be 2 to 1000"),
    "bad --val-fraction": ("d.jsonl", jl(*GOOD), ["--val-fraction", "1.5"],
                           r"--val-fraction \(1\.5\) must be in \(0, 1\)"),
    "bad --test-fraction": ("d.jsonl", jl(*GOOD), ["--test-fraction", "nan"],
                            r": error: --test-fraction \(nan\) must be in \[0, 1\)"),
    "fractions adding to 1": ("d.jsonl", jl(*GOOD), ["--val-fraction", "0.5",
                              "--test-fraction", "0.5"], r"together below 1"),
    "tokenizer from nothing": ("d.jsonl", jl(*GOOD), ["--tokenizer", "from:"],
                               r"--tokenizer from: needs a directory"),
    "tokenizer from a missing dir": ("d.jsonl", jl(*GOOD), ["--tokenizer", "from:/nowhere"],
                                     r"from:/nowhere: no such directory"),
    "tokenizer from a file": ("d.jsonl", jl(*GOOD), ["--tokenizer", "from:{w}/d.jsonl"],
                              r"from:.*/d.jsonl: is not a directory; give a checkpoint"),
    "unknown tokenizer": ("d.jsonl", jl(*GOOD), ["--tokenizer", "words"],
                          r"unknown tokenizer 'words'"),
    "a lone surrogate": ("d.jsonl", jl(GOOD[0], '{"text": "bad \\ud800 x", "label": "a"}'),
                         [], r"d\.jsonl:2: a string holds a lone surrogate"),
    "a label of 101 characters": ("d.jsonl", jl(GOOD[0], {"text": "x", "label": "y" * 101}),
                                  [], r"d\.jsonl:2: the label 'y+'\.\.\. is not a one-line"),
    "a label over two lines": ("d.jsonl", jl({"text": "x", "label": "a\nb"}), [],
                               r"d\.jsonl:1: the label 'a\\nb'\.\.\. is not a one-line"),
    "1,001 distinct labels": ("d.jsonl", jl(*({"text": "x", "label": f"l{i}"}
                                              for i in range(1001))), [],
                              r"d\.jsonl:1001: a label past the 1,000 distinct labels"),
}

INSTRUCT = {
    "neither layout": ("i.jsonl", jl({"prompt": "a", "completion": "b"}), [],
                       r"i\.jsonl:1: the record has neither \"messages\" nor \"instruction\""),
    "empty output": ("i.jsonl", jl(CHAT[0], {"instruction": "a", "output": " "}), [],
                     r"i\.jsonl:2: \"output\" is empty or not a string"),
    "no output": ("i.jsonl", jl({"instruction": "a"}), [], r"i\.jsonl:1: \"output\" is missing"),
    "input a number": ("i.jsonl", jl({"instruction": "a", "input": 3, "output": "b"}), [],
                       r"i\.jsonl:1: \"input\" is int"),
    "messages ending with the user": (
        "i.jsonl", jl({"messages": [{"role": "user", "content": "a"}]}), [],
        r"i\.jsonl:1: the last message must be the assistant's"),
    "messages with an unknown role": (
        "i.jsonl", jl({"messages": [{"role": "human", "content": "a"},
                                    {"role": "assistant", "content": "b"}]}), [],
        r"i\.jsonl:1: message 0 has role 'human'"),
    "empty assistant message": (
        "i.jsonl", jl({"messages": [{"role": "user", "content": "a"},
                                    {"role": "assistant", "content": ""}]}), [],
        r"i\.jsonl:1: \"content of message 1\" is empty"),
    "a csv file": ("i.csv", "instruction,output\n", [], r"give a \.jsonl file"),
    "bad json": ("i.jsonl", jl(CHAT[0], '{"instruction": '), [], r"i\.jsonl:2: not valid JSON"),
    "a lone surrogate": ("i.jsonl", jl('{"instruction": "a", "output": "\\udfff"}'), [],
                         r"i\.jsonl:1: a string holds a lone surrogate"),
}


def _case(tmp_path, verb, name, contents, flags):
    path = tmp_path / name
    path.write_bytes(contents if isinstance(contents, bytes) else contents.encode())
    flags = list(flags)
    if "--tokenizer" not in flags:
        flags += ["--tokenizer", "char"]
    return ["prepare", verb, str(path), "--out", "{w}/out", *flags]


@pytest.mark.parametrize("case", list(LABELS))
def test_a_broken_labels_file_is_refused(tmp_path, capsys, case):
    argv = _case(tmp_path, "labels", *LABELS[case][:3])
    assert_refused(argv, tmp_path, LABELS[case][3], capsys)


@pytest.mark.parametrize("case", list(INSTRUCT))
def test_a_broken_instruct_file_is_refused(tmp_path, capsys, case):
    argv = _case(tmp_path, "instruct", *INSTRUCT[case][:3])
    assert_refused(argv, tmp_path, INSTRUCT[case][3], capsys)


def test_labels_given_with_spaces_after_the_commas_are_the_same_labels(tmp_path, capsys):
    from stagegpt.cli import main

    argv = _case(tmp_path, "labels", "d.jsonl", jl(*GOOD), ["--labels", "b, a"])
    assert main([arg.format(w=tmp_path) for arg in argv]) == 0
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["labels"] == ["b", "a"]


@pytest.mark.parametrize("name", ["d.jsonl", "d.csv"])
def test_too_many_records_are_refused(tmp_path, capsys, monkeypatch, name):
    monkeypatch.setattr(finetune_records, "MAX_RECORDS", 5)
    contents = jl(*GOOD) if name.endswith("jsonl") else "text,label\n" + "".join(
        f"{r['text']},{r['label']}\n" for r in GOOD)
    line = 6 if name.endswith("jsonl") else 7
    assert_refused(_case(tmp_path, "labels", name, contents, []), tmp_path,
                   rf"d\.(jsonl|csv):{line}: more than 5 records", capsys)


def test_a_csv_field_up_to_the_line_limit_is_read(tmp_path):
    """csv's own field limit (128 KiB) is raised to the 1 MiB the docs give per line."""
    from stagegpt.data.user_records import read_labelled

    long_text = "x" * (200 << 10)
    path = tmp_path / "d.csv"
    path.write_text(f"text,label\n{long_text},a\nshort,b\n")
    labels, records = read_labelled(path)
    assert labels == ["a", "b"] and records[0]["text"] == long_text


def test_write_finetune_dir_keeps_a_directory_it_was_not_told_to_replace(tmp_path):
    from stagegpt.data import write_finetune_dir
    from stagegpt.data.tokenizers import get_tokenizer
    from stagegpt.errors import StagegptError

    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("mine")
    records = {"train": [{"text": "ab", "label": "a"}], "val": [{"text": "b", "label": "b"}],
               "test": []}
    meta = {"task": "classify", "source": "test", "labels": ["a", "b"]}
    tokenizer = get_tokenizer("char", "ab")
    with pytest.raises(StagegptError, match="overwrite is off") as err:
        write_finetune_dir(tmp_path / "precious", meta, records, tokenizer)
    assert err.value.param == "overwrite"
    assert (tmp_path / "precious" / "notes.txt").read_text() == "mine"
    write_finetune_dir(tmp_path / "precious", meta, records, tokenizer, overwrite=True)
    assert not (tmp_path / "precious" / "notes.txt").exists()
