"""Extreme and mistyped values from flags, TOML and the Python API: refused where they
enter, naming the flag (CLI) or the parameter (Python), before any long work."""

import math
from pathlib import Path

import pytest
import torch
from world import SAMPLE, TRAIN, assert_refused, copy_world, make_world

from stagegpt import ModelConfig, StagegptError, TrainConfig, build_model, generate
from stagegpt.cli import main
from stagegpt.train.trainer import Trainer

NEW_RUN = [a if a != "{w}/run" else "{w}/fresh" for a in TRAIN]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return make_world(tmp_path_factory.mktemp("hostile"))


def toml(w, text):
    (w / "cfg.toml").write_text(text)


FLAG_CASES = {
    "sample --max-new-tokens 10**12": ([*SAMPLE, "--max-new-tokens", str(10**12)], None,
                                       "--max-new-tokens must be an integer from 0"),
    "sample --seed -1": ([*SAMPLE, "--seed", "-1"], None, "--seed must be an integer in"),
    "sample --seed 2**64": ([*SAMPLE, "--seed", str(2**64)], None, "--seed must be"),
    "train --n-embd 10**6": ([*NEW_RUN, "--n-embd", str(10**6)], None,
                             "needs .* GB of memory but this machine has"),
    "train --batch-size 10**9": ([*NEW_RUN, "--batch-size", str(10**9)], None,
                                 "needs .* GB of memory"),
    "train --max-steps 10**15": ([*NEW_RUN, "--max-steps", str(10**15)], None,
                                 "--max-steps must be an integer from 1"),
    "train --seed -3": ([*NEW_RUN, "--seed", "-3"], None, "--seed must be an integer from 0"),
    "train --lr inf": ([*NEW_RUN, "--lr", "inf"], None, "--lr must be a finite number"),
    "inspect --batch 10**9": (["inspect", "--ckpt", "{w}/run", "--batch", str(10**9)], None,
                              "--batch-size must be an integer from 1 to 1,048,576"),
    "prepare markov --tokens 10**12": (
        ["prepare", "markov", "--tokens", str(10**12), "--out", "{w}/m"], None,
        "needs .* GB of memory"),
    "prepare markov --seed -1": (["prepare", "markov", "--seed", "-1", "--out", "{w}/m"],
                                 None, "--seed must be an integer in"),
    "TOML lr as a string": ([*NEW_RUN, "--config", "{w}/cfg.toml"],
                            lambda w: toml(w, '[train]\nlr = "1e-3"\n'),
                            "--lr must be a finite number >= 0, got '1e-3'"),
    "TOML dropout as a string": ([*NEW_RUN, "--config", "{w}/cfg.toml"],
                                 lambda w: toml(w, '[model]\ndropout = "0.1"\n'),
                                 "dropout must be a number"),
    "TOML preset a list": ([*NEW_RUN, "--config", "{w}/cfg.toml"],
                           lambda w: toml(w, 'preset = [1, 2]\n'), "`preset` must be a name"),
    "TOML compile a number": ([*NEW_RUN, "--config", "{w}/cfg.toml"],
                              lambda w: toml(w, '[train]\ncompile = 1\n'),
                              "--compile must be true or false"),
    "ladder --sample-tokens -1 before training": (
        ["ladder", "--data", "{w}/data", "--out", "{w}/lad", "--sample-tokens", "-1",
         "--max-steps", "1", "--no-progress"], None, "--sample-tokens must be an integer"),
    "ladder prompt the data cannot encode": (
        ["ladder", "--data", "{w}/data", "--out", "{w}/lad", "--prompt", "zebra?",
         "--max-steps", "1", "--no-progress"], None, "--prompt cannot be encoded"),
    "ladder --jobs 0": (["ladder", "--data", "{w}/data", "--out", "{w}/lad", "--jobs", "0",
                         "--max-steps", "1", "--no-progress"], None, "--jobs must be a whole"),
    "train --n-head 0": ([*NEW_RUN, "--n-head", "0"], None,
                         "^stagegpt train: error: --n-head must be a positive integer"),
    "train --n-head not dividing --n-embd": ([*NEW_RUN, "--n-head", "3"], None,
                                             r"error: --n-head \(3\) must divide n_embd \(16\)"),
    "train --eval-batches 10**8": ([*NEW_RUN, "--eval-batches", str(10**8)], None,
                                   "100000000 validation batches needs .* GB of memory"),
    "TOML beta2 that rounds to 1": (
        [*NEW_RUN, "--config", "{w}/cfg.toml"],
        lambda w: toml(w, "[train]\nbeta2 = 0.9999999999999999999\n"),
        r"error: beta2 \(in the --config file's \[train\] table\) must be below 1"),
    "TOML lr past any float": ([*NEW_RUN, "--config", "{w}/cfg.toml"],
                               lambda w: toml(w, "[train]\nlr = 1" + "0" * 400 + "\n"),
                               r"--lr must be a finite number >= 0, got 1000.*\(401 characters"),
    "TOML stage that is not --stage": ([*NEW_RUN, "--config", "{w}/cfg.toml"],
                                       lambda w: toml(w, "stage = 9\n"),
                                       "sets stage = 9 but --stage is 5"),
    "TOML max_seconds with --max-steps in a ladder": (
        ["ladder", "--data", "{w}/data", "--out", "{w}/lad", "--config", "{w}/cfg.toml",
         "--max-steps", "2", "--no-progress"], lambda w: toml(w, "[train]\nmax_seconds = 0.3\n"),
        "give --max-steps or --max-seconds, not both"),
    "train --config a directory": ([*NEW_RUN, "--config", "{w}/data"], None,
                                   "config file .*/data is a directory"),
    "train --lr 1e299": ([*NEW_RUN, "--lr", "1e299"], None,
                         r"error: --lr must be above 0 and at most 1, got 1e\+299"),
    "TOML lr 1e299": ([*NEW_RUN, "--config", "{w}/cfg.toml"],
                      lambda w: toml(w, "[train]\nlr = 1e299\n"),
                      "--lr must be above 0 and at most 1"),
    "train --min-lr above --lr": ([*NEW_RUN, "--lr", "1e-3", "--min-lr", "0.5"], None,
                                  r"error: --min-lr 0.5 \(by default 1e-4\) must be at most lr "),
    "train --weight-decay 1e299": ([*NEW_RUN, "--weight-decay", "1e299"], None,
                                   r"error: --weight-decay \(1e\+299\) times lr \(0.001\) must be"),
    "TOML integer past 4,300 digits": ([*NEW_RUN, "--config", "{w}/cfg.toml"],
                                       lambda w: toml(w, "[train]\nseed = 1" + "0" * 5000 + "\n"),
                                       "not valid TOML: an integer with more than 4,300"),
    "TOML nested past the stack": ([*NEW_RUN, "--config", "{w}/cfg.toml"],
                                   lambda w: toml(w, "a = " + "[" * 5000 + "]" * 5000 + "\n"),
                                   "cfg.toml is not valid TOML: nested too deeply"),
    "TOML unknown train key": ([*NEW_RUN, "--config", "{w}/cfg.toml"],
                               lambda w: toml(w, "[train]\nlearning_rate = 0.1\n"),
                               r"unknown \[train\] table \(.*cfg.toml\) keys: learning_rate; "
                               "the known ones are batch_size, beta1"),
    "TOML unknown model key": ([*NEW_RUN, "--config", "{w}/cfg.toml"],
                               lambda w: toml(w, "[model]\nwidth = 8\n"),
                               r"unknown \[model\] table \(.*cfg.toml\) keys: width; "),
    "TOML stage true": ([*NEW_RUN, "--config", "{w}/cfg.toml"], lambda w: toml(w, "stage = true\n"),
                        "`stage` a number"),
    "train --config a device": ([*NEW_RUN, "--config", "/dev/null"], None,
                                "config file /dev/null is a device, not a file"),
}


@pytest.mark.parametrize("case", list(FLAG_CASES))
def test_extreme_flags_are_refused_where_they_enter(case, pristine, tmp_path, capsys):
    argv, setup, pattern = FLAG_CASES[case]
    w = copy_world(pristine, tmp_path)
    if setup is not None:
        setup(w)
    assert_refused(argv, w, pattern, capsys)


def test_a_tiny_temperature_samples_greedily(pristine, tmp_path, capsys):
    w = copy_world(pristine, tmp_path)
    assert main([a.format(w=w) for a in SAMPLE] + ["--temperature", "1e-30"]) == 0
    tiny = capsys.readouterr().out
    assert main([a.format(w=w) for a in SAMPLE] + ["--temperature", "0"]) == 0
    assert capsys.readouterr().out == tiny


CONFIG = ModelConfig(vocab_size=16, block_size=8, n_embd=16, n_layer=1, n_head=1)


@pytest.mark.parametrize("call, parameter", [
    (lambda: ModelConfig(dropout="0.1"), "dropout"),
    (lambda: ModelConfig(n_head=0), "n_head"),
    (lambda: TrainConfig(lr="1e-3"), "lr"),
    (lambda: TrainConfig(batch_size=True), "batch_size"),
    (lambda: TrainConfig(beta2=1.0), "beta2"),
    (lambda: TrainConfig(lr=10**400), "lr"),
    (lambda: TrainConfig(lr=1e299), "lr"),
    (lambda: TrainConfig(lr=1e-3, min_lr=1e-2), "min_lr"),
    (lambda: TrainConfig(weight_decay=1e299), "weight_decay"),
    (lambda: ModelConfig(block_size=0), "block_size"),
    (lambda: ModelConfig(n_embd=30, n_head=4), "n_head"),
    (lambda: Trainer(5, CONFIG.to_dict(), TrainConfig(), "d", "o"), "model_config"),
    (lambda: Trainer(5, CONFIG, None, "d", "o"), "train_config"),
    (lambda: Trainer(5, CONFIG, TrainConfig(), None, "o"), "data_dir"),
    (lambda: Trainer(5, CONFIG, TrainConfig(), "d", ""), "out_dir"),
    (lambda: build_model(5, dict), "config"),
    (lambda: build_model("5", CONFIG), "stage"),
    (lambda: generate(build_model(5, CONFIG), torch.zeros(1, 2, dtype=torch.long), -1),
     "max_new_tokens"),
    (lambda: generate(build_model(5, CONFIG), torch.zeros(1, 2, dtype=torch.bool), 3), "idx"),
    (lambda: generate(build_model(5, CONFIG), torch.zeros(1, 2, dtype=torch.long), 3,
                      temperature=math.inf), "temperature"),
    (lambda: generate(build_model(5, CONFIG), torch.zeros(1, 2, dtype=torch.long), 3,
                      seed=2**64), "seed"),
])
def test_python_api_errors_name_python_parameters(call, parameter):
    with pytest.raises(StagegptError) as err:
        call()
    message = str(err.value)
    assert message.startswith(parameter) or f"{parameter} must" in message, message
    assert "--" not in message and "\n" not in message
