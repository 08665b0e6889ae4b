"""What every stage notebook sets up first: the demo's data, a fresh run dir, a step budget.

    nb = open_notebook(3)
    nb.tokenizer, nb.train_tokens, nb.val_tokens, nb.data, nb.run, nb.steps
    nb.sample(model, "ROMEO:\\n")

The data is `make demo`'s (8 plays of Shakespeare, one token per character), prepared on
first use exactly as `stagegpt prepare shakespeare --variant tiny --tokenizer char
--if-missing` does. Runs go to a fresh dir under $STAGEGPT_NB_RUNS (or the system's
temporary dir); $STAGEGPT_NB_STEPS sets the training steps (default 1000; CI uses fewer).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stagegpt.data.corpora import shakespeare_corpus
from stagegpt.data.datasets import load_split, load_tokenizer_from_data, read_meta
from stagegpt.data.prepare import DEFAULT_MIN_VAL_TOKENS, prepare_corpus, prepared_settings
from stagegpt.data.tokenizers import Tokenizer
from stagegpt.errors import StagegptError
from stagegpt.generation import generate
from stagegpt.model import LanguageModel

# What `stagegpt prepare shakespeare --variant tiny --tokenizer char` records: the same
# settings, so `make demo --if-missing` and the notebooks share one data dir.
DEMO_SETTINGS = {"source": "shakespeare", "variant": "tiny", "tokenizer": "char",
                 "min_val_tokens": DEFAULT_MIN_VAL_TOKENS}


@dataclass
class Notebook:
    data: Path
    run: Path
    steps: int
    tokenizer: Tokenizer
    train_tokens: np.ndarray
    val_tokens: np.ndarray

    def sample(self, model: LanguageModel, prompt: str = "\n", n: int = 160,
               seed: int = 0) -> str:
        """Continue `prompt` by n tokens (temperature 0.8, a fixed seed)."""
        idx = torch.tensor([self.tokenizer.encode(prompt)])
        out = generate(model, idx, n, temperature=0.8, seed=seed)  # (1, T + n)
        return self.tokenizer.decode(out[0].tolist())


def demo_data(data_dir: Path) -> Path:
    """`data_dir` holding the demo's data, prepared now unless it is there and intact."""
    existing = prepared_settings(data_dir)
    if existing == DEMO_SETTINGS:
        try:
            read_meta(data_dir)
            return data_dir
        except StagegptError:
            pass  # damaged: prepare it again
    elif existing is not None:
        raise StagegptError(f"{data_dir} holds another dataset ({existing}); move it away to "
                            "let the notebooks prepare the demo's data there")
    prepare_corpus(shakespeare_corpus("tiny"), "char", data_dir, settings=DEMO_SETTINGS,
                   progress=False, overwrite=existing is not None)  # replace only ours, damaged
    return data_dir


def open_notebook(number: int) -> Notebook:
    """The shared setup of notebook `number`, with a line saying what the data holds."""
    torch.set_num_threads(1)  # a tiny model runs as fast on one thread, and shares the machine
    root = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
    data = demo_data(root / "data" / "shakespeare_char")
    runs = Path(os.environ.get("STAGEGPT_NB_RUNS", tempfile.gettempdir()))
    runs.mkdir(parents=True, exist_ok=True)
    nb = Notebook(data=data,
                  run=Path(tempfile.mkdtemp(prefix=f"stagegpt-nb{number:02d}-", dir=runs)),
                  steps=int(os.environ.get("STAGEGPT_NB_STEPS", "1000")),
                  tokenizer=load_tokenizer_from_data(data),
                  train_tokens=load_split(data, "train"), val_tokens=load_split(data, "val"))
    print(f"{len(nb.train_tokens):,} train and {len(nb.val_tokens):,} val tokens, "
          f"vocabulary of {nb.tokenizer.vocab_size} characters; runs go to {nb.run}")
    return nb
