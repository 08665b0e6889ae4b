"""Three tokenizers behind one interface: GPT-2's BPE, characters, and a BPE you train.

    spec      class            vocabulary                         eot_id   start_id
    "gpt2"    GPT2Tokenizer    OpenAI GPT-2's 50,257 (tiktoken)   50256    50256
    "char"    CharTokenizer    the corpus's characters, sorted    None     id of "\\n" (else 0)
    "bpe:N"   BPETokenizer     N byte-level BPE tokens (HF)       its id   its eot_id

`start_id` is what generation starts from when the prompt is empty: the end-of-text
token where there is one (GPT-2 was trained with it between documents), otherwise the
newline, which begins a line the way the corpus does.

A tokenizer travels with a data dir or a checkpoint as `to_spec()` (JSON, stored under
"tokenizer") plus whatever files `save(directory)` writes; `load_tokenizer(spec, directory)`
restores it. `get_tokenizer(name, corpus_text)` builds a new one.

GPT-2's table (r50k_base) comes from, in order: the file named by $STAGEGPT_GPT2_RANKS;
stagegpt's cache; tiktoken's own cache; the `openai-whisper` source package, which ships
a byte-identical copy (`whisper/assets/gpt2.tiktoken`) that pip can fetch. Every source is
checked against the sha256 that tiktoken pins for r50k_base.
"""

from __future__ import annotations

import base64
import codecs
import functools
import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stagegpt.data.gpt2_ranks import gpt2_ranks_path, read_table
from stagegpt.errors import StagegptError
from stagegpt.fileio import read_json, read_text, write_json, write_text
from stagegpt.model.config import GPT2_VOCAB

EOT = "<|endoftext|>"
MAX_TOKENIZER_BYTES = 64 << 20  # a BPE tokenizer.json of 65k tokens is ~2 MB
GPT2_EOT_ID = GPT2_VOCAB - 1  # <|endoftext|>, GPT-2's last token


def without_surrogates(text: str) -> str:
    """`text` with each lone surrogate (which no UTF-8 can hold) replaced by U+FFFD, as
    tiktoken does: an argument holding bytes that are not UTF-8 still encodes."""
    if not isinstance(text, str):
        raise StagegptError(f"text to encode must be a string, got {type(text).__name__}")
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


class Tokenizer:
    """What every tokenizer offers. Ids are ints in [0, vocab_size)."""

    name: str
    vocab_size: int
    eot_id: int | None
    start_id: int
    chunk_chars = 1 << 18  # prepare encodes text in pieces of about this many characters

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_array(self, pieces: Sequence[str]) -> np.ndarray:
        """Ids of consecutive pieces of one text, concatenated, as int64 (prepare's path)."""
        ids = self.encode_batch(pieces)
        return np.fromiter((i for piece in ids for i in piece), dtype=np.int64,
                           count=sum(map(len, ids)))

    def decode(self, ids: Sequence[int]) -> str:
        """Text for any ids in range; bytes that are not UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The raw bytes of the ids: a token may hold part of a UTF-8 character."""
        raise NotImplementedError

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)

    def to_spec(self) -> dict[str, Any]:
        raise NotImplementedError

    def save(self, directory: str | Path) -> None:
        """Write the files `load_tokenizer` needs besides the spec (none by default)."""

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise StagegptError(f"token id {bad[0]} is outside the {self.name} vocabulary "
                                f"(0..{self.vocab_size - 1}); decode with the model's own "
                                "tokenizer")
        return ids

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"


class StreamDecoder:
    """Text from ids as they arrive, holding back a UTF-8 character split across tokens."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, ids: Sequence[int]) -> str:
        return self._utf8.decode(self.tokenizer.decode_bytes(ids))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


# ---------------------------------------------------------------------------------------
# GPT-2


@functools.lru_cache(maxsize=1)
def gpt2_encoding() -> Any:
    """tiktoken's Encoding with exactly GPT-2's ranks, pattern and <|endoftext|>."""
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str

    # read here, as tiktoken's loader would, which also copies the file into a cache dir
    table = read_table(gpt2_ranks_path(), "GPT-2 table")
    ranks = {base64.b64decode(token): int(rank)
             for token, rank in (line.split() for line in table.splitlines() if line)}
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={EOT: GPT2_EOT_ID}, explicit_n_vocab=GPT2_VOCAB)


class GPT2Tokenizer(Tokenizer):
    """OpenAI GPT-2's tokenizer, id for id. The text "<|endoftext|>" encodes as token 50256,
    as in Hugging Face's GPT-2 tokenizer. The table is loaded on first use."""

    name = "gpt2"
    vocab_size = GPT2_VOCAB
    eot_id = GPT2_EOT_ID
    start_id = GPT2_EOT_ID

    def encode(self, text: str) -> list[int]:
        return gpt2_encoding().encode(text, allowed_special="all")

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        threads = max(1, min(8, os.cpu_count() or 1))
        return gpt2_encoding().encode_batch(list(texts), num_threads=threads,
                                            allowed_special="all")

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return gpt2_encoding().decode_bytes(self._check_ids(ids))

    def to_spec(self) -> dict[str, Any]:
        return {"kind": "gpt2", "name": self.name, "vocab_size": self.vocab_size,
                "eot_id": self.eot_id}


# ---------------------------------------------------------------------------------------
# Characters


class CharTokenizer(Tokenizer):
    """One id per character; the vocabulary is the corpus's characters in sorted order.

    There is no end-of-text token. Encoding a character the corpus never had is an error
    (StagegptError naming it): a char model has no embedding for it.
    """

    name = "char"
    eot_id = None

    def __init__(self, chars: str):
        if not chars or len(set(chars)) != len(chars):
            raise StagegptError("a char tokenizer needs a non-empty vocabulary without repeats")
        self.chars = chars
        self.vocab_size = len(chars)
        self.start_id = chars.find("\n") if "\n" in chars else 0
        codes = np.frombuffer(chars.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        self._lookup = np.full(int(codes.max()) + 1, -1, dtype=np.int64)
        self._lookup[codes] = np.arange(len(chars))

    @classmethod
    def from_text(cls, text: str | Iterable[str]) -> CharTokenizer:
        pieces = [text] if isinstance(text, str) else list(text)
        chars = set().union(*map(set, pieces)) if pieces else set()
        if not chars:
            raise StagegptError("cannot build a char tokenizer from empty text")
        return cls("".join(sorted(chars)))

    def encode(self, text: str) -> list[int]:
        return self.encode_array([text]).tolist()

    def encode_array(self, pieces: Sequence[str]) -> np.ndarray:
        text = "".join(pieces)
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        known = codes < len(self._lookup)
        ids = np.full(len(codes), -1, dtype=np.int64)
        ids[known] = self._lookup[codes[known]]
        if (ids < 0).any():
            char = text[int(np.argmax(ids < 0))]
            raise StagegptError(
                f"character {char!r} (U+{ord(char):04X}) is not in this char tokenizer's "
                f"vocabulary of {self.vocab_size}; use text made of the corpus's characters "
                "or a gpt2/bpe tokenizer"
            )
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i] for i in self._check_ids(ids))

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return self.decode(ids).encode("utf-8", "surrogatepass")

    def to_spec(self) -> dict[str, Any]:
        return {"kind": "char", "name": self.name, "vocab_size": self.vocab_size,
                "eot_id": None, "chars": self.chars}

    def save(self, directory: str | Path) -> None:
        write_json(Path(directory) / "vocab.json", {"chars": list(self.chars)})


# ---------------------------------------------------------------------------------------
# Byte-level BPE trained with Hugging Face `tokenizers`


@functools.lru_cache(maxsize=1)
def byte_to_char() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte as a printable character. Bytes that print
    stand for themselves; the rest take the characters from U+0100 on, in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    mapping = {b: chr(b) for b in printable}
    for offset, b in enumerate(b for b in range(256) if b not in mapping):
        mapping[b] = chr(0x100 + offset)
    return mapping


class BPETokenizer(Tokenizer):
    """A byte-level BPE (GPT-2's pre-tokenization, <|endoftext|> special) trained on the
    corpus. Any string encodes: unseen characters fall back to their bytes."""

    chunk_chars = 2048  # HF encodes long strings slower per character than short ones

    def __init__(self, hf: Any, name: str, json_text: str | None = None):
        self.hf = hf
        self.name = name
        self.vocab_size = hf.get_vocab_size()
        self.eot_id = hf.token_to_id(EOT)
        if self.eot_id is None:
            raise StagegptError(f"this {name} tokenizer has no {EOT} token")
        self.start_id = self.eot_id
        to_byte = {c: b for b, c in byte_to_char().items()}
        special = {i: t.content for i, t in hf.get_added_tokens_decoder().items()}
        self._bytes = [
            special[i].encode() if i in special
            else bytes(to_byte[c] for c in hf.id_to_token(i))
            for i in range(self.vocab_size)
        ]
        self._json = json_text if json_text is not None else hf.to_str()

    @classmethod
    def train(cls, texts: str | Iterable[str], size: int, progress: bool = False
              ) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=[EOT],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=progress)
        pieces = [texts] if isinstance(texts, str) else list(texts)
        hf.train_from_iterator(_lines(pieces), trainer=trainer)
        return cls(hf, f"bpe:{size}")

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        try:
            return [e.ids for e in self.hf.encode_batch(list(texts))]
        except TypeError:  # a lone surrogate (undecodable bytes from argv, a JSON escape)
            return [e.ids for e in self.hf.encode_batch([without_surrogates(t) for t in texts])]

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(self._check_ids(ids), skip_special_tokens=False)

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return b"".join(self._bytes[i] for i in self._check_ids(ids))

    def to_spec(self) -> dict[str, Any]:
        return {"kind": "bpe", "name": self.name, "vocab_size": self.vocab_size,
                "eot_id": self.eot_id, "file": "tokenizer.json",
                "sha256": hashlib.sha256(self._json.encode()).hexdigest()}

    def save(self, directory: str | Path) -> None:
        write_text(Path(directory) / "tokenizer.json", self._json)


def _lines(pieces: list[str], size: int = 1 << 16) -> Iterable[str]:
    """Training text in ~64 KB pieces cut after newlines (the trainer counts words)."""
    for text in pieces:
        start = 0
        while start < len(text):
            end = text.find("\n", start + size)
            end = len(text) if end == -1 else end + 1
            yield text[start:end]
            start = end


# ---------------------------------------------------------------------------------------
# Building and restoring


def parse_bpe_size(name: str) -> int:
    try:
        size = int(name.split(":", 1)[1])
    except ValueError:
        size = -1
    if not 258 <= size <= 1_000_000:
        raise StagegptError(f"bad tokenizer {name!r}: bpe:N needs N from 258 to 1000000 "
                            "(256 bytes + <|endoftext|> + merges), e.g. bpe:4096")
    return size


def check_tokenizer_name(name: str) -> str:
    """`name` if it is "gpt2", "char" or a valid "bpe:N", else a StagegptError."""
    if name.startswith("bpe:"):
        parse_bpe_size(name)
    elif name not in ("gpt2", "char"):
        raise StagegptError(f"unknown tokenizer {name!r}; use gpt2, char or bpe:N "
                            "(e.g. bpe:4096)")
    return name


def get_tokenizer(name: str, corpus_text: str | Iterable[str] | None = None,
                  progress: bool = False) -> Tokenizer:
    """Build "gpt2", "char" or "bpe:N"; char and bpe are made from `corpus_text`."""
    if check_tokenizer_name(name) == "gpt2":
        return GPT2Tokenizer()
    if corpus_text is None:
        raise StagegptError(f"the {name} tokenizer is built from a corpus; give its text")
    if name == "char":
        return CharTokenizer.from_text(corpus_text)
    return BPETokenizer.train(corpus_text, parse_bpe_size(name), progress=progress)


def load_tokenizer(spec: dict[str, Any], directory: str | Path | None = None) -> Tokenizer:
    """The tokenizer described by `spec` (from `to_spec`), reading its files from
    `directory` (the data or checkpoint dir it was saved to)."""
    kind = spec.get("kind") if isinstance(spec, dict) else None
    where = f" in {directory}" if directory is not None else ""
    if kind == "gpt2":
        tokenizer: Tokenizer = GPT2Tokenizer()
    elif kind == "char":
        chars = spec.get("chars")
        if chars is None:
            if directory is None:
                raise StagegptError("a char tokenizer spec without chars needs its directory")
            vocab = read_json(Path(directory) / "vocab.json", "char vocabulary")
            chars = vocab.get("chars") if isinstance(vocab, dict) else None
            if isinstance(chars, list) and all(isinstance(c, str) and len(c) == 1
                                               for c in chars):  # one character per id
                chars = "".join(chars)
        if not isinstance(chars, str) or not chars or len(set(chars)) != len(chars):
            raise StagegptError(f"the char tokenizer{where} has no list of single characters, "
                                "or repeats one (its vocab.json or spec is damaged); prepare "
                                "the data again")
        tokenizer = CharTokenizer(chars)
    elif kind == "bpe":
        if directory is None:
            raise StagegptError(f"loading {spec.get('name', 'a bpe tokenizer')} needs the "
                                "directory holding its tokenizer.json")
        name = spec.get("file", "tokenizer.json")
        if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
            raise StagegptError(f"the tokenizer spec{where} names file {name!r:.60}, which is not "
                                "a plain file name inside its directory; refusing to read it")
        path = Path(directory) / name
        if not path.exists():
            raise StagegptError(f"{path} is missing; the tokenizer of this data dir or "
                                "checkpoint is lost, prepare the data again")
        text = read_text(path, "tokenizer file", MAX_TOKENIZER_BYTES)
        if spec.get("sha256") and hashlib.sha256(text.encode()).hexdigest() != spec["sha256"]:
            raise StagegptError(f"{path} does not match the tokenizer spec (sha256 differs); "
                                "it was changed after it was saved")
        from tokenizers import Tokenizer as HFTokenizer

        try:
            tokenizer = BPETokenizer(HFTokenizer.from_str(text), spec.get("name", "bpe"), text)
        except StagegptError as err:
            raise StagegptError(f"{path}: {err}; prepare the data again") from None
        except Exception as err:  # the Rust parser raises a bare Exception
            reason = " ".join(str(err).split())[:80] or type(err).__name__
            raise StagegptError(f"{path} is not a byte-level BPE tokenizer file ({reason}); "
                                "prepare the data again") from None
    else:
        raise StagegptError(f"unknown tokenizer spec{where}: {spec!r:.80}; expected kind "
                            "gpt2, char or bpe")
    expected = spec.get("vocab_size")
    if expected is not None and expected != tokenizer.vocab_size:
        raise StagegptError(f"tokenizer{where} has {tokenizer.vocab_size} tokens but its spec "
                            f"says {expected}; the files do not belong together")
    return tokenizer
