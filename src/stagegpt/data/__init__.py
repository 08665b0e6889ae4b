"""Data: where text comes from, tokenizers, and the token bins a model trains on.

    corpus = shakespeare_corpus("tiny")                  # or text_corpus(["notes/", "book.txt"])
    prepare_corpus(corpus, "char", "data/shakespeare_char")   # -> train.bin, val.bin, meta.json
    prepare_markov("data/markov", order=2, vocab=16, tokens=1_000_000, seed=0)
    train = load_split("data/shakespeare_char", "train")     # a read-only memmap of ids
    x, y = sample_batch(train, batch_size=12, block_size=64, generator=torch.Generator())

    prepare_genre("data/genre", tokenizer="from:runs/char")  # fine-tuning dirs: JSONL records
    meta, records = read_finetune_dir("data/genre")           # ... read back, every line checked

These are what `stagegpt prepare` runs; an existing data dir is replaced only with
`overwrite=True` (the CLI's --force).
"""

from stagegpt.data.chat_data import prepare_chat
from stagegpt.data.corpora import Corpus, shakespeare_corpus, text_corpus
from stagegpt.data.datasets import (
    TokenWindows,
    load_split,
    load_tokenizer_from_data,
    read_meta,
    sample_batch,
)
from stagegpt.data.finetune_records import (
    read_finetune_dir,
    read_finetune_split,
    write_finetune_dir,
)
from stagegpt.data.genre import prepare_genre
from stagegpt.data.prepare import prepare_corpus, prepare_markov
from stagegpt.data.r8 import prepare_r8
from stagegpt.data.tokenizers import Tokenizer, get_tokenizer, load_tokenizer
from stagegpt.data.user_records import prepare_user_file

__all__ = [
    "Corpus", "TokenWindows", "Tokenizer", "get_tokenizer", "load_split", "load_tokenizer",
    "load_tokenizer_from_data", "prepare_chat", "prepare_corpus", "prepare_genre",
    "prepare_markov", "prepare_r8", "prepare_user_file", "read_finetune_dir",
    "read_finetune_split", "read_meta", "sample_batch", "shakespeare_corpus", "text_corpus",
    "write_finetune_dir",
]
