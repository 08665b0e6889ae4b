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


def test_threads_sets_torch_threads_and_refuses_zero(capsys):
    before = torch.get_num_threads()
    try:
        assert main(["inspect", "--stage", "1", "--preset", "micro", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    capsys.readouterr()
    assert main(["inspect", "--stage", "1", "--threads", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "stagegpt inspect: error: --threads must be >= 1, got 0"


def test_preset_help_lists_the_presets_and_refuses_others(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "micro" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["train", "--stage", "1", "--data", "d", "--out", "o", "--preset", "gpt5"])
    assert done.value.code == 2 and "invalid choice: 'gpt5'" in capsys.readouterr().err
