"""`stagegpt bench`: its arguments, and one cheap section run for real."""

from stagegpt.cli import main


def test_bench_rejects_unknown_sections(capsys):
    assert main(["bench", "--only", "train,warp"]) == 2
    assert "--only takes train, decode, rss and prepare" in capsys.readouterr().err


def test_bench_prepare_section_reports_throughput(capsys):
    assert main(["bench", "--only", "prepare", "--quick"]) == 0
    assert "MB/s" in capsys.readouterr().out
