"""The tools stay readable and bounded at any size: whole-split scoring has a cap, a time
budget's ladder plots by seconds, attention maps of long texts stay legible."""

import numpy as np
import pytest
import torch

from stagegpt import ModelConfig, build_model
from stagegpt.errors import StagegptError
from stagegpt.tools import attention_maps as maps_module
from stagegpt.tools import ladder
from stagegpt.tools.attention_maps import AttentionMaps, draw_maps
from stagegpt.tools.evaluate import split_loss


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(5, ModelConfig(vocab_size=16, block_size=8, n_embd=16, n_layer=1,
                                      n_head=2)).eval()


def test_split_loss_scores_at_most_max_tokens_spread_over_the_split(model, monkeypatch):
    tokens = np.random.default_rng(0).integers(0, 16, 8 * 100 + 1)  # 100 windows
    seen = []
    real = model.loss

    def counting(x, y):
        seen.append(x.clone())
        return real(x, y)

    monkeypatch.setattr(model, "loss", counting)
    capped = split_loss(model, tokens, fast=False, max_tokens=80)  # 10 windows
    windows = torch.cat(seen)
    assert windows.shape == (10, 8)
    assert windows[0, 0] == tokens[0] and windows[-1, 0] == tokens[99 * 8]  # first and last
    seen.clear()
    whole = split_loss(model, tokens, fast=False)
    assert torch.cat(seen).shape == (100, 8) and capped != whole
    seen.clear()
    assert split_loss(model, tokens, fast=False, max_tokens=10**9) == whole


@pytest.mark.parametrize("change, param", [
    (dict(tokens=np.array([0, 1, 16] * 10)), "tokens"),  # 16: past the vocabulary
    (dict(tokens=np.array([0, -1] * 20)), "tokens"),
    (dict(tokens=np.zeros((4, 9), dtype=np.int64)), "tokens"),
    (dict(tokens=[0, 1] * 10), "tokens"),
    (dict(batch_size=0), "batch_size"), (dict(batch_size=10**30), "batch_size"),
    (dict(max_tokens=0), "max_tokens"),
])
def test_split_loss_checks_its_arguments(model, change, param):
    args = {"tokens": np.arange(40) % 16, **change}
    with pytest.raises(StagegptError, match=f"^{param} must be|^{param} holds") as err:
        split_loss(model, **args)
    assert err.value.param == param


def test_a_time_budget_ladder_plots_by_training_seconds(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(ladder, "read_metrics", lambda run: [
        {"step": 10, "elapsed": 1.5, "val_loss": 2.0}, {"step": 20, "elapsed": 3.0,
                                                          "val_loss": 1.5}])
    monkeypatch.setattr(ladder, "plot_curves",
                        lambda curves, path, hlines, title, xlabel: drawn.update(
                            curves=curves, xlabel=xlabel))
    ladder.write_plot([1], tmp_path, {}, x="elapsed")
    assert drawn == {"curves": {"stage 1": [(1.5, 2.0), (3.0, 1.5)]},
                     "xlabel": "training seconds"}
    ladder.write_plot([1], tmp_path, {})
    assert drawn["curves"]["stage 1"][0] == (10, 2.0) and drawn["xlabel"] == "step"


def test_attention_maps_of_a_long_text_show_its_last_cells_scaled_per_row():
    T = 300
    weights = torch.tril(torch.ones(T, T))
    weights = (weights / weights.sum(-1, keepdim=True))[None, None]  # (1, 1, T, T)
    maps = AttentionMaps([f"t{i}" for i in range(T)], list(range(T)), weights, [(0, 0)])
    fig = draw_maps(maps, 1, 1)
    image = fig.axes[0].images[0].get_array()
    assert image.shape == (maps_module.MAX_CELLS, maps_module.MAX_CELLS)
    assert np.allclose(image.max(axis=1), 1.0)  # every row reaches the top of the scale
    assert "tokens 204-299" in fig.axes[0].get_title()
