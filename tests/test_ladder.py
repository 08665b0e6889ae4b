import csv
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import running, wait_for
from safetensors.torch import load_file

from stagegpt import build_model
from stagegpt.cli import main
from stagegpt.errors import StagegptError
from stagegpt.interop import load_checkpoint
from stagegpt.model.config import ModelConfig
from stagegpt.tools import ladder, ladder_jobs
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
    with pytest.raises(StagegptError, match="pass `resume=True` to continue it or choose a new"):
        ladder.run_ladder(markov2, out, MODEL, train, stages=(1, 3), progress=False)
    with pytest.raises(StagegptError, match=r"other settings \(stages \[1, 3\] then, \[1\] now; "
                       r"train.lr 0.001 then, 0.002 now\); rerun"):
        ladder.run_ladder(markov2, out, MODEL, replace(train, lr=2e-3), stages=(1,),
                          resume=True, progress=False)
    rows = ladder.run_ladder(markov2, out, MODEL, train, stages=(1, 3), resume=True,
                             progress=False, sample_tokens=5)
    assert (out / "stage1" / "metrics.jsonl").stat().st_mtime_ns == stage1  # skipped
    assert [r.val_loss for r in rows] == [r.val_loss for r in reference]
    for stage in (1, 3):
        ours = load_file(str(step_dirs(out / f"stage{stage}")[-1] / "model.safetensors"))
        ref = load_file(str(step_dirs(tmp_path / "ref" / f"stage{stage}")[-1] /
                            "model.safetensors"))
        assert all((ours[k] == ref[k]).all() for k in ref)


@pytest.mark.parametrize("at_step", [2, 5])
def test_ctrl_c_while_timing_the_budget_stops_the_ladder(at_step, markov2, tmp_path,
                                                        monkeypatch):
    """Ctrl-C in the few steps that turn max_seconds into a step budget: it stopped only
    the timing, and the ladder trained on with a budget from fewer steps (or, stopped by
    step 2, raised an IndexError)."""
    class CtrlCWhileTiming(Trainer):
        def fit(self):
            if self.out_dir.name == ".probe3":
                clock = self.on_step
                self.on_step = lambda trainer, row: clock(trainer, row) or (
                    row["step"] == at_step and os.kill(os.getpid(), signal.SIGINT))
            return super().fit()

    train = TrainConfig(batch_size=4, eval_batches=2)
    out = tmp_path / "l"
    with monkeypatch.context() as patch:
        patch.setattr(ladder, "Trainer", CtrlCWhileTiming)
        assert ladder.run_ladder(markov2, out, MODEL, train, stages=(3,), max_seconds=0.5,
                                 progress=False, sample_tokens=5) is None
    assert sorted(p.name for p in out.iterdir()) == [".lock", "ladder.json"]  # no probe left
    rows = ladder.run_ladder(markov2, out, MODEL, train, stages=(3,), max_seconds=0.5,
                             resume=True, progress=False, sample_tokens=5)
    budget = json.loads((out / "stage3" / "budget.json").read_text())["max_steps"]
    assert rows is not None and step_dirs(out / "stage3")[-1].name == f"step_{budget:08d}"


def test_resume_removes_what_a_killed_ladder_was_writing(markov2, tmp_path):
    """A ladder killed while it wrote its table, plot or samples left the temporary file
    beside them, and every --resume left it there."""
    train = TrainConfig(max_steps=1, batch_size=2, eval_batches=1, warmup_steps=0)
    out = tmp_path / "l"
    assert ladder.run_ladder(markov2, out, MODEL, train, stages=(1,), progress=False,
                             sample_tokens=2) is not None
    table = (out / "ladder.csv").read_text()
    for torn in (".ladder.csv.k1ll3d.tmp", ".ladder.png.x8f2ab.tmp", ".samples.md.q0w9e8.tmp"):
        (out / torn).write_text("half of it")
    assert ladder.run_ladder(markov2, out, MODEL, train, stages=(1,), resume=True,
                             progress=False, sample_tokens=2) is not None
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock", "ladder.csv", "ladder.json", "ladder.md", "ladder.png", "samples.md", "stage1"]
    assert (out / "ladder.csv").read_text() == table


def test_sigterm_outside_a_stages_training_stops_the_ladder_as_ctrl_c_does(
        markov2, tmp_path, monkeypatch, capsys):
    """SIGTERM to `ladder --jobs 1` while it scored or sampled a stage killed it (exit -15,
    not a word), where a stage in training, or --jobs 2, stopped with 130. Here SIGTERM's
    default action, which would end pytest too, is a handler that fails the test."""
    monkeypatch.setattr(ladder, "sample_text",
                        lambda *args: os.kill(os.getpid(), signal.SIGTERM))

    def default_action(signum, frame):
        raise AssertionError("SIGTERM would have killed the ladder")

    before = signal.signal(signal.SIGTERM, default_action)
    try:
        assert main(["ladder", "--data", str(markov2), "--out", str(tmp_path / "l"),
                     "--stages", "1", "--max-steps", "1", "--eval-batches", "1",
                     "--batch-size", "2", "--n-embd", "16", "--block-size", "8",
                     "--no-progress", "--jobs", "1"]) == 130
        assert signal.getsignal(signal.SIGTERM) is default_action  # given back
    finally:
        signal.signal(signal.SIGTERM, before)
    assert capsys.readouterr().err.endswith("stagegpt ladder: interrupted\n")
    assert not (tmp_path / "l" / "ladder.md").exists()


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


@pytest.fixture
def two_threads():
    """Two threads in this process, as its workers share them; restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_stages_side_by_side_give_what_they_give_in_turn(markov2, tmp_path, two_threads):
    """Two worker processes with a thread each: the table, samples and weights of the
    stages trained in turn with one thread (another thread count sums in another order)."""
    train = TrainConfig(max_steps=6, batch_size=4, eval_every=3, eval_batches=2,
                        ckpt_every=100, warmup_steps=1)
    runs = {2: ladder.run_ladder(markov2, tmp_path / "jobs2", MODEL, train, stages=(1, 3, 5),
                                 progress=False, sample_tokens=8, jobs=2)}
    torch.set_num_threads(1)
    runs[1] = ladder.run_ladder(markov2, tmp_path / "jobs1", MODEL, train, stages=(1, 3, 5),
                                progress=False, sample_tokens=8, jobs=1)
    losses = {jobs: [(r.stage, r.train_loss, r.val_loss, r.endings_acc) for r in rows]
              for jobs, rows in runs.items()}
    assert losses[2] == losses[1] and [s for s, *_ in losses[2]] == [1, 3, 5]
    one, two = tmp_path / "jobs1", tmp_path / "jobs2"
    assert (two / "samples.md").read_text() == (one / "samples.md").read_text()
    for stage in (1, 3, 5):
        ours = load_file(str(step_dirs(two / f"stage{stage}")[-1] / "model.safetensors"))
        ref = load_file(str(step_dirs(one / f"stage{stage}")[-1] / "model.safetensors"))
        assert all(torch.equal(ours[k], ref[k]) for k in ref)


@dataclass(frozen=True)
class HeldAtStep3(ladder.StageJob):
    """A stage job whose worker waits after step 3 until the parent stops the ladder."""

    def run(self, stage, on_step=None):
        def report_and_hold(trainer, row):
            on_step(trainer, row)
            if row["step"] == 3 and ladder_jobs._stop.wait(60):
                trainer.request_stop()

        return super().run(stage, on_step=report_and_hold)


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_side_by_side_ladder_stops_on_ctrl_c_and_resumes_exactly(stop, markov2, tmp_path,
                                                                 monkeypatch, two_threads):
    """Ctrl-C (or SIGTERM) in the parent: each worker stops after its step with a
    checkpoint saved, and --resume ends where an uninterrupted ladder does (here one
    thread, in turn)."""
    train = TrainConfig(max_steps=8, batch_size=4, eval_every=4, eval_batches=2,
                        ckpt_every=100, warmup_steps=1)
    torch.set_num_threads(1)
    reference = ladder.run_ladder(markov2, tmp_path / "ref", MODEL, train, stages=(3, 5),
                                  progress=False, sample_tokens=5)
    torch.set_num_threads(2)
    reports = []

    def ctrl_c_once_both_reach_step_3(self, stage, step, *rest):
        reports.append((stage, step))
        if {(3, 3), (5, 3)} <= set(reports):
            if stop == "sigterm":  # the ladder turns it into a KeyboardInterrupt here
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                raise KeyboardInterrupt

    out = tmp_path / "split"
    with monkeypatch.context() as patch:
        patch.setattr(ladder, "StageJob", HeldAtStep3)
        patch.setattr(ladder_jobs.StageBars, "show", ctrl_c_once_both_reach_step_3)
        assert ladder.run_ladder(markov2, out, MODEL, train, stages=(3, 5), progress=False,
                                 sample_tokens=5, jobs=2) is None
    assert [step_dirs(out / f"stage{s}")[-1].name for s in (3, 5)] == ["step_00000003"] * 2
    rows = ladder.run_ladder(markov2, out, MODEL, train, stages=(3, 5), resume=True,
                             progress=False, sample_tokens=5, jobs=2)
    assert [r.val_loss for r in rows] == [r.val_loss for r in reference]
    assert (out / "samples.md").read_text() == (tmp_path / "ref" / "samples.md").read_text()


def test_a_worker_error_is_the_cli_one_line_error(markov2, tmp_path, capsys):
    args = ["ladder", "--data", str(markov2), "--out", str(tmp_path / "l"), "--stages", "3,4",
            "--max-steps", "2", "--eval-every", "2", "--eval-batches", "1", "--batch-size", "2",
            "--n-embd", "16", "--block-size", "8", "--no-progress", "--sample-tokens", "4"]
    assert main(args + ["--jobs", "1"]) == 0
    state = step_dirs(tmp_path / "l" / "stage4")[-1] / "trainer_state.json"
    state.write_text("{not json")
    capsys.readouterr()
    assert main(args + ["--jobs", "2", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trainer_state.json" in err, err
    assert state.read_text() == "{not json"  # left as it was found


def test_jobs_are_checked_and_chosen_by_the_threads_there_are(markov2, tmp_path,
                                                              monkeypatch):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(StagegptError, match="^jobs must") as caught:
            ladder.run_ladder(markov2, tmp_path / "x", MODEL, TrainConfig(), jobs=bad)
        assert caught.value.for_flags().startswith("--jobs must")
    assert not (tmp_path / "x").exists()
    for threads, stages, expected in ((1, 5, 1), (2, 5, 2), (8, 5, 2), (8, 1, 1)):
        monkeypatch.setattr(torch, "get_num_threads", lambda threads=threads: threads)
        assert ladder_jobs.auto_jobs(stages) == expected


def test_the_ladder_reads_the_val_splits_largest_id_once_a_stage(markov2, tmp_path,
                                                                 monkeypatch):
    """The trainer checks val.bin's ids; the table's val loss read the split again."""
    from stagegpt.data import datasets

    passes = []
    original = datasets.largest_id
    monkeypatch.setattr(datasets, "largest_id", lambda t: passes.append(len(t)) or original(t))
    train = TrainConfig(max_steps=1, batch_size=2, eval_batches=1, warmup_steps=0)
    small = ModelConfig(n_embd=16, n_layer=1, n_head=1, block_size=8)
    assert ladder.run_ladder(markov2, tmp_path / "l", small, train, stages=(1, 3),
                             progress=False, sample_tokens=2) is not None
    val = len(np.fromfile(markov2 / "val.bin", dtype=np.uint16))
    assert passes.count(val) == 2


def test_jobs_past_threads_is_refused_not_run_on_more_threads(markov2, tmp_path, capsys):
    """--threads is the whole ladder's: `--threads 1 --jobs 2` ran two workers of a thread
    each, twice the threads asked for."""
    before = torch.get_num_threads()
    try:
        assert main(["ladder", "--data", str(markov2), "--out", str(tmp_path / "l"),
                     "--max-steps", "1", "--no-progress", "--threads", "1", "--jobs", "2"]) == 2
    finally:
        torch.set_num_threads(before)
    err = capsys.readouterr().err.strip()
    assert err == ("stagegpt ladder: error: --jobs 2 needs a thread per worker, but there are "
                   "1 (--threads, or the cores); pass --jobs 1 to train the stages in turn, or "
                   "more --threads")
    assert not (tmp_path / "l").exists()


def test_a_stagegpt_error_keeps_its_parameter_through_pickling():
    import pickle

    sent = StagegptError("max_new_tokens must be >= 0", "max_new_tokens")
    err = pickle.loads(pickle.dumps(sent))
    assert isinstance(err, StagegptError) and err.param == "max_new_tokens"
    assert err.for_flags() == "--max-new-tokens must be >= 0"


def test_the_ladder_refuses_torchrun_in_one_line(markov2, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["ladder", "--data", str(markov2), "--out", str(tmp_path / "l"),
                 "--max-steps", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "torchrun" in err
    assert not (tmp_path / "l").exists()


def test_the_parent_draws_one_bar_per_stage_from_the_reports(capsys):
    bars = ladder_jobs.StageBars(enabled=True)
    bars.show(5, 1, 10, 4.0, None)
    bars.show(4, 1, 10, 4.1, None)
    bars.show(5, 4, 10, 3.5, 3.6)
    assert {s: (b.desc, b.n, b.total) for s, b in bars.bars.items()} == {
        5: ("stage 5", 4, 10), 4: ("stage 4", 1, 10)}
    assert bars.bars[5].postfix == "loss=3.5000, val=3.6000"
    bars.close()
    quiet = ladder_jobs.StageBars(enabled=False)
    quiet.show(5, 1, 10, 4.0, None)
    assert quiet.bars == {}


def test_no_more_workers_than_stages(markov2, tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(ladder, "train_side_by_side",
                        lambda job, stages, jobs: asked.append(jobs))  # then "interrupted"
    assert ladder.run_ladder(markov2, tmp_path / "l", MODEL, TrainConfig(), stages=(1, 2),
                             progress=False, jobs=8) is None
    assert asked == [2]


@dataclass(frozen=True)
class DiesAtStep2(ladder.StageJob):
    """A stage job whose worker process is killed at step 2."""

    def run(self, stage, on_step=None):
        def die(trainer, row):
            if row["step"] == 2:
                os._exit(9)

        return super().run(stage, on_step=die)


def test_a_dead_worker_is_a_one_line_error_that_says_how_to_go_on(markov2, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setattr(ladder, "StageJob", DiesAtStep2)
    train = TrainConfig(max_steps=4, batch_size=4, eval_every=4, eval_batches=2)
    with pytest.raises(StagegptError, match="worker process died.*`resume=True`.*`jobs=1`"):
        ladder.run_ladder(markov2, tmp_path / "l", MODEL, train, stages=(1, 3),
                          progress=False, sample_tokens=5, jobs=2)


def ladder_argv(data, out, *extra) -> list[str]:
    """Stages 3 and 4 side by side, in two workers of a thread each."""
    return ["ladder", "--data", str(data), "--out", str(out), "--stages", "3,4", "--jobs", "2",
            "--threads", "2", "--eval-batches", "1", "--batch-size", "2", "--n-embd", "16",
            "--n-layer", "1", "--block-size", "8", "--no-progress", "--sample-tokens", "4",
            *extra]


def start_ladder(data, out, *extra) -> subprocess.Popen:
    """`stagegpt ladder` in a session of its own, as a terminal's foreground job is."""
    argv = ladder_argv(data, out, *extra)
    return subprocess.Popen([sys.executable, "-m", "stagegpt", *argv], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def workers(pid: int) -> list[int]:
    """The ladder worker processes of the ladder `pid`."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(c) for c in children
            if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def test_ctrl_c_while_the_workers_start_is_exit_130_without_tracebacks(markov2, tmp_path):
    """Ctrl-C to the process group while the workers import torch (seconds): each worker
    printed a KeyboardInterrupt traceback."""
    ladder_cli = start_ladder(markov2, tmp_path / "l", "--max-steps", "50")
    wait_for(lambda: len(workers(ladder_cli.pid)) == 2, ladder_cli)
    os.killpg(ladder_cli.pid, signal.SIGINT)
    out, err = ladder_cli.communicate(timeout=120)
    assert ladder_cli.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert out == ""  # status lines go to stderr, like every other
    assert err.endswith("ladder interrupted; rerun the same command with --resume to continue\n")


def test_workers_of_a_killed_ladder_stop_with_a_checkpoint_and_exit(markov2, tmp_path,
                                                                     two_threads):
    """SIGKILL of the ladder's parent: its workers trained their stages on alone to the end,
    holding the stages' locks (a --resume meanwhile was refused), then waited for work
    forever. Now each stops after its step with a checkpoint, and --resume ends where an
    uninterrupted ladder does."""
    flags = ["--max-steps", "300", "--eval-every", "20", "--ckpt-every", "1000"]
    out = tmp_path / "l"
    ladder_cli = start_ladder(markov2, out, *flags)
    orphans = []
    try:
        wait_for(lambda: all((out / f"stage{s}" / "metrics.jsonl").exists() for s in (3, 4)),
                 ladder_cli)
        orphans = workers(ladder_cli.pid)
        ladder_cli.kill()
        ladder_cli.wait()
        wait_for(lambda: not any(map(running, orphans)))
    finally:
        for pid in filter(running, orphans):
            os.kill(pid, signal.SIGKILL)
    assert len(orphans) == 2
    stopped = [step_dirs(out / f"stage{s}") for s in (3, 4)]
    assert all(len(found) == 1 and found[0].name != "step_00000300" for found in stopped)
    assert main(ladder_argv(markov2, out, *flags, "--resume")) == 0
    assert main(ladder_argv(markov2, tmp_path / "ref", *flags)) == 0
    for stage in (3, 4):
        ours, ref = (load_file(str(step_dirs(d / f"stage{stage}")[-1] / "model.safetensors"))
                     for d in (out, tmp_path / "ref"))
        assert step_dirs(out / f"stage{stage}")[-1].name == "step_00000300"
        assert all(torch.equal(ours[k], ref[k]) for k in ref)
