"""A tiny pretrained stage 5 and a learnable "genre" task for fine-tuning tests.

The corpus is sentences of three made-up genres, each with words of its own and words
they share, plus chat-template lines (so the char vocabulary holds the template's
characters). A two-block stage 5 learns it in a few seconds; its hidden states then tell
the genres apart much better than the majority class does.
"""

import random

from finetune_data import chat_record, write_classify_dir, write_instruct_dir

from stagegpt import ModelConfig, TrainConfig
from stagegpt.data.corpora import Corpus
from stagegpt.data.prepare import prepare_corpus
from stagegpt.train.trainer import Trainer

GENRES = {"comedy": "merry jest wed laugh fool feast dance",
          "history": "king crown war realm lord siege banner",
          "tragedy": "death blood grief tomb woe poison night"}
SHARED = "the and of to my a in".split()
BASE_CONFIG = ModelConfig(block_size=64, n_embd=32, n_layer=2, n_head=2, dropout=0.0)


def sentence(rng, genre):
    own = GENRES[genre].split()
    return " ".join(rng.choice(own if rng.random() < 0.8 else SHARED)
                    for _ in range(rng.randint(6, 10)))


def corpus_text(seed=0, lines=1500):
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        out.append(sentence(rng, rng.choice(list(GENRES))))
        if i % 25 == 0:
            out.append("SYSTEM:\nplay\n\nUSER:\nsay a word\n\nASSISTANT:\nking\n")
    return "\n".join(out) + "\n"


def pretrain(root, steps=80):
    """A prepared char data dir and a stage 5 trained on it for `steps` steps."""
    data = root / "pretrain-data"
    prepare_corpus(Corpus("test", corpus_text(0), corpus_text(1, 200)), "char", data,
                   progress=False)
    config = TrainConfig(max_steps=steps, batch_size=8, lr=5e-3, min_lr=5e-4, warmup_steps=5,
                         eval_every=steps, eval_batches=2, ckpt_every=steps)
    Trainer(5, BASE_CONFIG, config, data, root / "base", progress=False).fit()
    return root / "base"


def genre_records(seed, n, weights=(2, 1, 1)):
    """n (text, label) records, labels drawn with `weights` (comedy the majority)."""
    rng = random.Random(seed)
    labels = rng.choices(list(GENRES), weights=weights, k=n)
    return [{"text": sentence(rng, label), "label": label} for label in labels]


def write_genre_dir(path, tokenizer, n_train=240, n_eval=90):
    records = {"train": genre_records(1, n_train), "val": genre_records(2, n_eval),
               "test": genre_records(3, n_eval)}
    return write_classify_dir(path, records, tokenizer, labels=list(GENRES))


def word_records(seed, n):
    """'name a <genre> word' -> one word of that genre, with its exact answer."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        genre = rng.choice(list(GENRES))
        word = GENRES[genre].split()[0]
        out.append(chat_record(f"a {genre} word", word, kind="speaker", answer=word))
    return out


def write_word_dir(path, tokenizer):
    records = {"train": word_records(1, 60), "val": word_records(2, 12),
               "test": word_records(3, 12)}
    return write_instruct_dir(path, records, tokenizer)
