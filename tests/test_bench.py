"""`stagegpt bench`: its arguments, and one cheap section run for real."""

from stagegpt.cli import main
from stagegpt.tools import bench


def test_bench_rejects_unknown_sections(capsys):
    assert main(["bench", "--only", "train,warp"]) == 2
    assert "--only takes train, decode, rss and prepare" in capsys.readouterr().err


def test_bench_prepare_section_reports_throughput(capsys):
    assert main(["bench", "--only", "prepare", "--quick"]) == 0
    assert "MB/s" in capsys.readouterr().out


def test_bench_refuses_zero_char_processes(capsys):
    assert main(["bench", "--char-processes", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("--char-processes must be >= 1, got 0") and len(err.splitlines()) == 1


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
