import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

from stagegpt import ModelConfig  # noqa: E402


@pytest.fixture
def tiny_config() -> ModelConfig:
    """A model small enough for any test: 2 blocks, 2 heads, width 32, context 16."""
    return ModelConfig(vocab_size=97, block_size=16, n_embd=32, n_layer=2, n_head=2)


@pytest.fixture(scope="session")
def markov_data(tmp_path_factory):
    """make(order, vocab, tokens, seed, concentration=0.1) -> a prepared Markov data dir,
    each distinct one written once per session."""
    from stagegpt.data.prepare import prepare_markov

    made = {}

    def make(order: int, vocab: int, tokens: int, seed: int, concentration: float = 0.1):
        key = (order, vocab, tokens, seed, concentration)
        if key not in made:
            made[key] = tmp_path_factory.mktemp("markov") / "data"
            prepare_markov(made[key], order, vocab, tokens, seed, concentration=concentration)
        return made[key]

    return make


@pytest.fixture(scope="session")
def pretrained_char5(tmp_path_factory):
    """A tiny stage 5 pretrained on a made-up genre corpus (tests/finetune_base.py), on one
    thread (see one_thread)."""
    from finetune_base import pretrain

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return pretrain(tmp_path_factory.mktemp("pretrained"))
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, above all on a machine shared with other jobs
    (two threads then spin-wait for each other); the previous setting comes back after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

