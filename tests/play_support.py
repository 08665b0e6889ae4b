"""A tiny trained ladder (stages 3 and 5 on a little English text) for the playground's
tests, trained once per session however many test modules ask for it."""

from __future__ import annotations

from pathlib import Path

from stagegpt.data import prepare_corpus, text_corpus
from stagegpt.model.config import ModelConfig
from stagegpt.tools.ladder import run_ladder
from stagegpt.train.config import TrainConfig

TEXT = """\
To be, or not to be, that is the question:
Whether 'tis nobler in the mind to suffer
The slings and arrows of outrageous fortune,
Or to take arms against a sea of troubles
And by opposing end them. To die, to sleep;
No more; and by a sleep to say we end
The heart-ache and the thousand natural shocks
That flesh is heir to: 'tis a consummation
Devoutly to be wish'd.
"""
MODEL = ModelConfig(n_embd=32, n_layer=2, n_head=2, block_size=32)
TRAIN = TrainConfig(max_steps=120, batch_size=16, lr=1e-2, min_lr=1e-3, warmup_steps=5,
                    eval_every=60, eval_batches=2, ckpt_every=1000, weight_decay=0.0)
_made: dict[str, Path] = {}


def tiny_ladder(tmp_path_factory) -> Path:
    """OUT of `stagegpt ladder` for stages 3 and 5 of a char model: OUT/stage3, OUT/stage5,
    OUT/ladder.csv."""
    if "ladder" not in _made:
        root = tmp_path_factory.mktemp("play")
        (root / "poem.txt").write_text(TEXT * 40, encoding="utf-8")
        data = root / "data"
        prepare_corpus(text_corpus([root / "poem.txt"]), "char", data, progress=False)
        run_ladder(data, root / "ladder", MODEL, TRAIN, stages=(3, 5), progress=False,
                   sample_tokens=8)
        _made["ladder"] = root / "ladder"
    return _made["ladder"]
