import csv
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from stagegpt import build_model
from stagegpt.cli import main
from stagegpt.errors import StagegptError
from stagegpt.interop import load_checkpoint
from stagegpt.model.config import ModelConfig
from stagegpt.tools import ladder
from stagegpt.tools.evaluate import split_loss
from stagegpt.train.config import TrainConfig
from stagegpt.train.rundir import step_dirs
from stagegpt.train.trainer import Trainer

MODEL = ModelConfig(n_embd=32, n_layer=2, n_head=2, block_size=16)


@pytest.fixture(scope="module")
def markov2(markov_data) -> Path:
    return markov_data(order=2, vocab=6, tokens=200_000, seed=0, concentration=0.3)


def test_attention_beats_the_bigram_floor_that_stages_1_2_cannot(markov2, tmp_path):
    meta = json.loads((markov2 / "meta.json").read_text())
    entropy, floor = meta["entropy_rate"], meta["bigram_entropy"]
    assert floor - entropy > 0.3  # the source really needs more than one token of context
    train = TrainConfig(max_steps=500, batch_size=16, lr=1e-2, min_lr=1e-3, warmup_steps=20,
                        eval_every=100, eval_batches=40, ckpt_every=1000, weight_decay=0.0)
    rows = ladder.run_ladder(markov2, tmp_path / "ladder", MODEL, train, stages=(1, 2, 5),
                             progress=False, sample_tokens=10)
    by_stage = {r.stage: r for r in rows}
    assert by_stage[1].val_loss >= floor - 0.02
    assert by_stage[2].val_loss >= floor - 0.02
    assert by_stage[5].val_loss <= 1.05 * entropy, (by_stage[5].val_loss, entropy)

    out = tmp_path / "ladder"
    with open(out / "ladder.csv") as f:
        table = list(csv.DictReader(f))
    assert [int(r["stage"]) for r in table] == [1, 2, 5]
    assert set(table[0]) == {"stage", "adds", "params", "flops_per_token", "train_loss",
                             "val_loss", "val_ppl", "tokens_per_sec", "wall_time",
                             "kv_bytes_per_token", "endings_acc", "endings_acc_norm"}
    # the endings test: attention also picks true continuations that a bigram cannot
    assert by_stage[5].endings_acc_norm > by_stage[1].endings_acc_norm > 0.25
    assert "| 5 |" in (out / "ladder.md").read_text()
    assert (out / "ladder.png").stat().st_size > 1000
    assert (out / "samples.md").read_text().count("## Stage") == 3
    assert load_checkpoint(out / "stage5").stage == 5


def interrupt_stage(stage, at_step, monkeypatch):
    class Interrupting(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if self.stage == stage:
                self.on_step = lambda trainer, row: row["step"] == at_step and os.kill(
                    os.getpid(), signal.SIGINT)

    monkeypatch.setattr(ladder, "Trainer", Interrupting)


def test_interrupted_ladder_resumes_skipping_finished_stages(markov2, tmp_path, monkeypatch):
    train = TrainConfig(max_steps=6, batch_size=4, eval_every=3, eval_batches=2, ckpt_every=100,
                        warmup_steps=1)
    reference = ladder.run_ladder(markov2, tmp_path / "ref", MODEL, train, stages=(1, 3),
                                  progress=False, sample_tokens=5)

    out = tmp_path / "split"
    with monkeypatch.context() as patch:
        interrupt_stage(3, 2, patch)
        assert ladder.run_ladder(markov2, out, MODEL, train, stages=(1, 3), progress=False,
                                 sample_tokens=5) is None
    stage1 = (out / "stage1" / "metrics.jsonl").stat().st_mtime_ns
    with pytest.raises(StagegptError, match="--resume"):
        ladder.run_ladder(markov2, out, MODEL, train, stages=(1, 3), progress=False)
    rows = ladder.run_ladder(markov2, out, MODEL, train, stages=(1, 3), resume=True,
                             progress=False, sample_tokens=5)
    assert (out / "stage1" / "metrics.jsonl").stat().st_mtime_ns == stage1  # skipped
    assert [r.val_loss for r in rows] == [r.val_loss for r in reference]
    for stage in (1, 3):
        ours = load_file(str(step_dirs(out / f"stage{stage}")[-1] / "model.safetensors"))
        ref = load_file(str(step_dirs(tmp_path / "ref" / f"stage{stage}")[-1] /
                            "model.safetensors"))
        assert all((ours[k] == ref[k]).all() for k in ref)


def test_ladder_cli_prints_the_table_and_checks_flags(markov2, tmp_path, capsys):
    args = ["ladder", "--data", str(markov2), "--out", str(tmp_path / "l"), "--stages", "1,2",
            "--max-steps", "2", "--eval-every", "2", "--eval-batches", "1", "--batch-size", "2",
            "--n-embd", "16", "--block-size", "8", "--no-progress", "--sample-tokens", "4"]
    assert main(args) == 0
    assert "| 2 |" in capsys.readouterr().out
    for bad in (["--stages", "1,7"], ["--stages", "x"], ["--max-seconds", "5"]):
        assert main(args + bad) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "error" in err


def test_split_loss_scores_every_full_window_of_the_split_once(tiny_config):
    """The table's val loss: the mean cross-entropy over consecutive block_size windows,
    computed here the textbook way, window by window, with full logits."""
    torch.manual_seed(0)
    model = build_model(5, tiny_config)
    T = tiny_config.block_size
    tokens = np.random.default_rng(0).integers(0, tiny_config.vocab_size, 5 * T + 7)
    windows = [tokens[i:i + T + 1] for i in range(0, len(tokens) - T, T)]  # 5 full windows
    with torch.no_grad():
        losses = [F.cross_entropy(model(torch.tensor(w[None, :-1]))[0][0],
                                  torch.tensor(w[1:]), reduction="sum") for w in windows]
    expected = float(sum(losses)) / (len(windows) * T)
    assert split_loss(model, tokens, batch_size=2) == pytest.approx(expected, rel=1e-5)
    assert model.training  # left as it was found
