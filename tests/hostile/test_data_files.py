"""Crafted data dirs: meta.json fields of the wrong type or range, ids outside the
vocabulary. Refused before training, with one line, exit 2, nothing changed."""

import json
from pathlib import Path

import numpy as np
import pytest
from world import TRAIN, assert_refused, copy_world, edit_json, make_world


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return make_world(tmp_path_factory.mktemp("hostile"))


NEW_RUN = [a if a != "{w}/run" else "{w}/fresh" for a in TRAIN]


def meta(**changes):
    return lambda w: edit_json(w / "data" / "meta.json", **changes)


def poke(split, value):
    def setup(w):
        ids = np.fromfile(w / "data" / f"{split}.bin", dtype="<u2")
        ids[len(ids) // 2] = value
        ids.tofile(w / "data" / f"{split}.bin")
    return setup


def vocab_beyond_the_tokenizer(w):
    """A spec without its vocab_size, so only the tokenizer itself can disagree."""
    data = json.loads((w / "data" / "meta.json").read_text())
    del data["tokenizer"]["vocab_size"]
    edit_json(w / "data" / "meta.json", vocab_size=65536, tokenizer=data["tokenizer"])


def vocab_json_of_pieces(w):
    """16 distinct characters in 15 entries: joined, they would pass for 16 ids, every id
    after "ab" shifted by one."""
    meta(tokenizer={"kind": "char", "vocab_size": 16})(w)
    pieces = ["ab", *"cdefghijklmnop"]
    (w / "data" / "vocab.json").write_text(json.dumps({"chars": pieces}))


def train_bin_a_directory(w):
    (w / "data" / "train.bin").unlink()
    (w / "data" / "train.bin").mkdir()


CASES = {
    "train.bin a directory": (train_bin_a_directory, "train.bin is not a regular file but "
                                                     "meta.json says"),
    "char vocabulary with repeats": (
        meta(tokenizer={"kind": "char", "vocab_size": 16, "chars": "a" * 16}),
        "the char tokenizer in .*/data has no list of single characters, or repeats one"),
    "char vocabulary with a two-character entry": (
        vocab_json_of_pieces, "the char tokenizer in .*/data has no list of single characters"),
    "vocab_size larger than the tokenizer's": (vocab_beyond_the_tokenizer,
                                               "tokenizer has 16 tokens but meta.json says "
                                               "vocab_size 65536"),
    "vocab_size as a string": (meta(vocab_size="16"), "vocab_size '16', not a count"),
    "negative token count": (meta(train_tokens=-1), "train_tokens -1, not a count"),
    "dtype float64": (meta(dtype="float64"), "expected uint16 or uint32"),
    "token counts that disagree with the bins": (meta(val_tokens=10**9), "val.bin has"),
    "entropy rate as text": (meta(entropy_rate="low"), "entropy_rate 'low', not an entropy"),
    "entropy rate infinite": (
        lambda w: (w / "data" / "meta.json").write_text(
            (w / "data" / "meta.json").read_text().replace('"entropy_rate": ',
                                                           '"entropy_rate": Infinity, "x": ')),
        "entropy_rate inf"),
    "tokenizer spec of another kind": (meta(tokenizer={"kind": "word"}), "unknown tokenizer"),
    "val id outside the vocabulary": (poke("val", 60000), "val.bin holds token id 60000"),
    "train id outside the vocabulary": (poke("train", 60000),
                                        "train.bin holds token id 60000"),
    "meta.json a list": (lambda w: (w / "data" / "meta.json").write_text("[]"), "lacks"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_crafted_data_dir_is_refused(case, pristine, tmp_path, capsys):
    setup, pattern = CASES[case]
    w = copy_world(pristine, tmp_path)
    setup(w)
    assert_refused(NEW_RUN, w, pattern, capsys)
