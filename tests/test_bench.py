"""`stagegpt bench`: its arguments, and one cheap section run for real."""

import pytest

from stagegpt.cli import main
from stagegpt.tools import bench


def test_bench_rejects_unknown_sections(capsys):
    assert main(["bench", "--only", "train,warp"]) == 2
    assert "--only takes train, decode, rss and prepare" in capsys.readouterr().err


def test_bench_prepare_section_reports_throughput(capsys):
    assert main(["bench", "--only", "prepare", "--quick"]) == 0
    assert "MB/s" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--char-processes", "0"], "--char-processes must be from 1 to 100, got 0"),
    (["--char-processes", "101"], "--char-processes must be from 1 to 100, got 101"),
    (["--rounds", "1001"], "--rounds must be from 1 to 1000, got 1001"),
    (["--threads", str(10**20)], f"--threads must be from 1 to 1024, got {10**20}"),
    (["--only", ","], "--only names no section"),
    (["--json", "/nonexistent/x.json"], "the directory /nonexistent does not exist"),
    (["--json", "{tmp}"], "is a directory"),
])
def test_bench_refuses_bad_flags_before_running(flags, message, tmp_path, capsys):
    assert main(["bench", *(f.format(tmp=tmp_path) for f in flags)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_char_trials_run_in_a_fresh_process():
    """What each of `make bench`'s char processes reports: one trial per side per round,
    from twins whose first losses agree."""
    child = bench.char_child_trials(rounds=1, threads=1)
    assert sorted(child["trials"]) == ["char fp32 HF", "char fp32 plain", "char fp32 stagegpt"]
    assert all(len(v) == 1 and v[0] > 0 for v in child["trials"].values())
    ours, hf = child["losses"]["char fp32 stagegpt"], child["losses"]["char fp32 HF"]
    assert abs(ours - hf) < 0.01  # the same weights; only the last position's target differs
    assert abs(ours - child["losses"]["char fp32 plain"]) < 1e-5  # fast equals plain


def test_the_report_says_why_bf16_rows_were_not_run():
    """Where bf16 products are emulated the bench runs no bf16 rows; the table says so."""
    import argparse

    from stagegpt.tools.bench_report import Trials, report

    names = ["seed fp32 stagegpt", "seed fp32 plain", "seed fp32 HF",
             "char fp32 stagegpt", "char fp32 plain", "char fp32 HF", "fp32 torch.mm"]
    trials = Trials({name: [100.0 + i] for i, name in enumerate(names)})
    results = {"train": {"trials": trials, "flops": {"seed": 1e8, "char": 5e6},
                         "char_ratios": [], "faults": Trials({"seed fp32 stagegpt": [0.0]}),
                         "losses": {}},
               "load": {"train": (0.5, 0.6)}}
    text = report(results, argparse.Namespace(threads=2, rounds=1))
    assert "| seed bf16 | not run: this CPU has no native bf16 products" in text
    assert "| seed fp32 | 100 | 101 | 102 | **0.98x** |" in text


def test_the_report_pairs_rounds_and_states_the_fp32_bound():
    """The paired ratio is the median of per-round ratios (not a ratio of medians), and
    the fp32 bound is the fastest fp32 ceiling over HF's achieved GFLOP/s."""
    import argparse

    from stagegpt.tools.bench_report import Trials, report

    trials = Trials({"seed fp32 stagegpt": [100.0, 300.0, 250.0],
                     "seed fp32 plain": [90.0, 90.0, 90.0],
                     "seed fp32 HF": [100.0, 100.0, 200.0],  # rounds: 1x, 3x, 1.25x
                     "fp32 torch.mm": [40.0, 40.0, 40.0], "fp32 oneDNN": [30.0, 30.0, 30.0]})
    results = {"train": {"trials": trials, "flops": {"seed": 1e8}, "char_ratios": [],
                         "faults": Trials(), "losses": {}},
               "decode": {"trials": Trials({"stagegpt": [10.0, 30.0], "plain": [5.0, 5.0],
                                            "HF": [10.0, 10.0]}), "same_tokens": True},
               "load": {"train": (0.5, 0.6)}}
    text = report(results, argparse.Namespace(threads=2, rounds=3))
    assert "| seed fp32 | 250 | 90 | 100 | **2.50x** |" in text  # ratio of medians
    assert "per-round stagegpt/HF ratios): seed fp32 1.25x" in text
    assert "would be 4.00x HF" in text  # 40 GFLOP/s against HF's 100 tokens/s x 1e8 FLOPs
    assert "paired ratio (median of the per-round ratios): 2.00x" in text  # decode: 1x, 3x
