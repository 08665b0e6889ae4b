"""The HellaSwag-style endings test: its items, its scoring, and `stagegpt eval`."""

import json
import shutil

import numpy as np
import pytest
import torch

from stagegpt import ModelConfig, TrainConfig, Trainer, build_model
from stagegpt.cli import main
from stagegpt.errors import StagegptError
from stagegpt.interop import load_checkpoint
from stagegpt.tools.endings import (
    CHOICES,
    ending_losses,
    items_for_window,
    make_items,
    score_endings,
)
from stagegpt.train.checkpoints import save_checkpoint

TOKENS = np.random.default_rng(0).integers(0, 50, 5_000)


def test_items_are_fixed_by_the_seed_and_hold_the_true_continuation():
    items = make_items(TOKENS, items=50, context=20, ending=(4, 9), seed=3)
    again = make_items(TOKENS, items=50, context=20, ending=(4, 9), seed=3)
    assert items == again
    assert items != make_items(TOKENS, items=50, context=20, ending=(4, 9), seed=4)
    text = TOKENS.tolist()
    answers = {item.answer for item in items}
    assert answers == set(range(CHOICES))  # the true ending is not always in one place
    for item in items:
        assert len(item.context) == 20 and len(item.endings) == CHOICES
        assert all(4 <= len(e) <= 9 for e in item.endings)
        whole = item.context + item.endings[item.answer]
        starts = [i for i in range(len(text)) if text[i:i + len(whole)] == whole]
        assert starts, "context + true ending is a span of the split"
        assert len({tuple(e) for e in item.endings}) == CHOICES


def test_ending_losses_equal_each_ending_scored_alone(tiny_config):
    """Padding the endings to one length and masking changes no ending's loss."""
    torch.manual_seed(0)
    model = build_model(5, tiny_config).eval()
    context, endings = [5, 6, 7, 8, 9], [[1, 2], [3, 4, 5, 6], [7], [8, 9, 10]]
    got = ending_losses(model, [(context, e) for e in endings] + [(context[2:], [4, 4])])
    mixed = ending_losses(model, [(context[2:], [4, 4])])  # another context length
    torch.testing.assert_close(got[4], mixed[0], rtol=1e-5, atol=1e-5)
    for i, ending in enumerate(endings):
        seq = torch.tensor([context + ending])
        logits, _ = model(seq[:, :-1])
        logp = torch.log_softmax(logits[0], dim=-1)
        want = -sum(logp[len(context) - 1 + j, t] for j, t in enumerate(ending))
        torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-5)


def test_a_trained_model_beats_chance_and_a_fresh_one_does_not(markov_data, tmp_path):
    data = markov_data(order=1, vocab=12, tokens=60_000, seed=0, concentration=0.05)
    config = ModelConfig(vocab_size=12, block_size=32, n_embd=16, n_layer=1, n_head=2)
    val = np.memmap(data / "val.bin", dtype=np.uint16, mode="r")
    items = items_for_window(val, config.block_size)
    assert len(items) == 400 and max(len(e) for i in items for e in i.endings) == 8
    torch.manual_seed(0)
    fresh = score_endings(build_model(5, config), items)
    assert fresh.accuracy_norm < 0.4  # near chance, or below it: an untrained bias
    train = TrainConfig(max_steps=150, batch_size=16, lr=1e-2, warmup_steps=10,
                        eval_every=150, eval_batches=2, ckpt_every=1000)
    trainer = Trainer(5, config, train, data, tmp_path / "run", progress=False)
    trainer.fit()
    trained = score_endings(trainer.model, items)
    assert trained.accuracy_norm > 0.5, trained
    one_by_one = score_endings(trainer.model, items, batch=1)  # batching changes nothing
    assert (one_by_one.accuracy, one_by_one.accuracy_norm) == (trained.accuracy,
                                                               trained.accuracy_norm)



def test_eval_cli_prints_and_refuses(markov_data, tmp_path, capsys):
    data = markov_data(order=1, vocab=12, tokens=60_000, seed=0, concentration=0.05)
    other = markov_data(order=1, vocab=9, tokens=20_000, seed=1)
    config = ModelConfig(vocab_size=12, block_size=32, n_embd=16, n_layer=1, n_head=2)
    train = TrainConfig(max_steps=2, batch_size=2, warmup_steps=1, eval_every=2,
                        eval_batches=1, ckpt_every=1000)
    Trainer(5, config, train, data, tmp_path / "run", progress=False).fit()
    ckpt = str(tmp_path / "run")
    capsys.readouterr()
    assert main(["eval", "--ckpt", ckpt, "--data", str(data), "--items", "20",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["items"] == 20 and result["chance"] == 0.25
    assert 0 <= result["accuracy"] <= 1 and result["val_loss"] > 0
    assert main(["eval", "--ckpt", ckpt, "--data", str(data), "--items", "20", "--json",
                 "--dtype", "bfloat16"]) == 0
    bf16 = json.loads(capsys.readouterr().out)
    assert bf16["val_loss"] != result["val_loss"]  # really computed in bfloat16
    assert abs(bf16["val_loss"] - result["val_loss"]) < 0.02
    assert main(["eval", "--ckpt", ckpt, "--data", str(data), "--items", "20"]) == 0
    assert "length-normalized" in capsys.readouterr().out
    assert main(["sample", "--ckpt", ckpt, "--dtype", "bfloat16", "--max-new-tokens", "5",
                 "--seed", "0"]) == 0
    with pytest.raises(StagegptError, match="^dtype must be one of float32, bfloat16"):
        load_checkpoint(ckpt, dtype="float16")
    for flags, words in ((["--items", "0"], "--items must be"),
                         (["--ending-min", "9", "--ending-max", "3"], "--ending-min"),
                         (["--ending-max", "40"], "--ending-min/--ending-max of up to 40 "
                                                   "tokens leaves no context"),
                         (["--seed", "-1"], "--seed")):
        assert main(["eval", "--ckpt", ckpt, "--data", str(data), *flags]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
    assert main(["eval", "--ckpt", ckpt, "--data", str(other)]) == 2
    assert "another tokenizer" in capsys.readouterr().err
    bad_ids = tmp_path / "bad_ids"
    shutil.copytree(data, bad_ids)
    val = np.memmap(bad_ids / "val.bin", dtype=np.uint16, mode="r+")
    val[5] = 12  # one past the vocabulary
    val.flush()
    assert main(["eval", "--ckpt", ckpt, "--data", str(bad_ids)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "val.bin holds token id 12, outside" in err


def test_eval_fits_its_defaults_to_a_small_window_and_writes_nan_as_null(
        markov_data, tmp_path, capsys):
    """A 16-token window gets the ladder's window-sized test by default (not a refusal),
    and a diverged model's loss prints as JSON null, never as NaN (not JSON)."""
    data = markov_data(order=1, vocab=12, tokens=20_000, seed=0, concentration=0.05)
    config = ModelConfig(vocab_size=12, block_size=16, n_embd=16, n_layer=1, n_head=2)
    torch.manual_seed(0)
    model = build_model(5, config)
    save_checkpoint(tmp_path / "small", model, None)
    assert main(["eval", "--ckpt", str(tmp_path / "small"), "--data", str(data), "--items",
                 "10", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == 10
    with torch.no_grad():  # finite weights whose logits overflow (NaN weights are refused)
        model.lm_head.weight.fill_(3e38)
    save_checkpoint(tmp_path / "nan", model, None)
    assert main(["eval", "--ckpt", str(tmp_path / "nan"), "--data", str(data), "--items",
                 "10", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["val_loss"] is None


def test_eval_fills_the_ending_length_not_given_from_the_one_given(markov_data, tmp_path,
                                                                    capsys, monkeypatch):
    """--ending-max 3 alone was refused as (8, 3), and --ending-min 12 alone in a 16-token
    window as endings of up to 16 tokens: the length not given is its default, kept on
    the right side of the one given."""
    from stagegpt.tools import endings

    data = markov_data(order=1, vocab=12, tokens=20_000, seed=0, concentration=0.05)
    config = ModelConfig(vocab_size=12, block_size=16, n_embd=16, n_layer=1, n_head=2)
    save_checkpoint(tmp_path / "ckpt", build_model(5, config), None)
    asked = []
    original = endings.make_items
    monkeypatch.setattr(endings, "make_items",
                        lambda *args: asked.append(args[3]) or original(*args))
    for flags, lengths in ((["--ending-max", "3"], (2, 3)), (["--ending-min", "12"], (12, 12)),
                           ([], (2, 4))):
        assert main(["eval", "--ckpt", str(tmp_path / "ckpt"), "--data", str(data),
                     "--items", "5", "--json", *flags]) == 0, capsys.readouterr().err
        assert asked.pop() == lengths
    assert main(["eval", "--ckpt", str(tmp_path / "ckpt"), "--data", str(data),
                 "--ending-min", "5", "--ending-max", "3"]) == 2
    assert "got (5, 3)" in capsys.readouterr().err


def test_eval_reads_the_val_splits_largest_id_once(markov_data, tmp_path, monkeypatch,
                                                   capsys):
    """Its vocabulary check was a full pass over val.bin, and split_loss made a second."""
    from stagegpt.data import datasets

    data = markov_data(order=1, vocab=12, tokens=20_000, seed=0, concentration=0.05)
    config = ModelConfig(vocab_size=12, block_size=16, n_embd=16, n_layer=1, n_head=2)
    save_checkpoint(tmp_path / "ckpt", build_model(5, config), None)
    passes = []
    original = datasets.largest_id
    monkeypatch.setattr(datasets, "largest_id", lambda t: passes.append(len(t)) or original(t))
    assert main(["eval", "--ckpt", str(tmp_path / "ckpt"), "--data", str(data), "--items",
                 "10", "--json"]) == 0
    assert passes == [len(np.fromfile(data / "val.bin", dtype=np.uint16))]


def test_a_split_too_uniform_for_four_endings_is_refused_not_looped_on():
    """Three tokens cycling: every 1-token ending is one of three, so four different ones
    cannot be drawn; the draws are bounded and the refusal names `ending`."""
    cycle = np.tile(np.arange(3, dtype=np.uint16), 2000)
    too_few = "^ending of 1-1 tokens: the split holds too few"
    with pytest.raises(StagegptError, match=too_few) as err:
        make_items(cycle, items=3, context=4, ending=(1, 1))
    assert err.value.param == "ending"
    assert items_for_window(cycle, 4) is None  # the ladder shows "-" for such a source


def test_the_python_api_names_its_parameters():
    for kwargs, words in ((dict(items=0), "^items must be"),
                          (dict(ending=(9, 3)), "^ending must be"),
                          (dict(seed=-1), r"^seed must be an integer in \[0, 2\^63\)")):
        with pytest.raises(StagegptError, match=words):
            make_items(TOKENS, **kwargs)


def test_a_split_too_short_is_refused():
    # 4 x (48 + 16): the message read "4 x context + longest ending", which is 208
    with pytest.raises(StagegptError, match=r"needs at least 256 \(4 x \(context \+ longest"):
        make_items(TOKENS[:100], items=5, context=48, ending=(8, 16))
    assert items_for_window(TOKENS[:100], 64) is None
