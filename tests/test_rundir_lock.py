"""A run dir belongs to one process: a second trainer is refused at once, naming the holder;
a holder killed with SIGKILL never blocks `--resume`."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import wait_for

from stagegpt.cli import main
from stagegpt.errors import StagegptError
from stagegpt.train.rundir import LOCK_FILE, RunLock, holder, step_dirs

MICRO = ["--n-layer", "1", "--n-head", "1", "--n-embd", "16", "--block-size", "8",
         "--batch-size", "2", "--eval-every", "5", "--eval-batches", "1", "--warmup-steps", "2",
         "--no-progress"]


@pytest.fixture(scope="module")
def data(markov_data) -> Path:
    return markov_data(order=1, vocab=16, tokens=4000, seed=3)


def train_argv(data, out, steps, *extra):
    return ["train", "--stage", "5", "--data", str(data), "--out", str(out),
            "--max-steps", str(steps), *MICRO, *extra]


def start(argv) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "stagegpt", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def holds_lock(out: Path, pid: int) -> bool:
    path = out / LOCK_FILE
    return path.exists() and path.read_text().split("\n")[0] == str(pid)


def test_a_second_trainer_is_refused_while_the_first_finishes_intact(data, tmp_path, capsys):
    out = tmp_path / "run"
    steps = 400
    first = start(train_argv(data, out, steps, "--ckpt-every", "100"))
    try:
        wait_for(lambda: holds_lock(out, first.pid), first)
        started = time.monotonic()
        assert main(train_argv(data, out, steps, "--resume")) == 2
        assert time.monotonic() - started < 5
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert f"in use by process {first.pid} (a training run)" in err, err
        assert first.wait(timeout=240) == 0, first.stderr.read()
    finally:
        first.kill()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))


def test_a_killed_holder_never_blocks_resume(data, tmp_path):
    out = tmp_path / "run"
    argv = train_argv(data, out, 5000, "--ckpt-every", "20")
    holder = start(argv)
    try:
        wait_for(lambda: bool(step_dirs(out)), holder)
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        holder.kill()
    assert holds_lock(out, holder.pid)  # the file remains; the kernel's lock went with it
    killed_at = int(step_dirs(out)[-1].name.split("_")[1])
    assert main([*argv, "--resume", "--max-seconds", "2"]) == 0  # a time budget may change
    assert int(step_dirs(out)[-1].name.split("_")[1]) > killed_at


def test_run_lock_in_one_process(tmp_path):
    """The same process cannot take a run dir twice either (a second Trainer in a notebook)."""
    out = tmp_path / "run"
    with RunLock(out, "ladder"):  # the message names what holds it, not what asks
        with pytest.raises(StagegptError, match=rf"in use by process {os.getpid()} \(a ladder\)"):
            RunLock(out).acquire()
    with RunLock(out):  # released: free again
        pass
    (out / LOCK_FILE).write_bytes(b"\x00\xff" * 40)  # damaged: still one printable line
    with RunLock(out):
        assert holder((out / LOCK_FILE).read_bytes()) == (str(os.getpid()), "a training run")
    assert holder(b"\x00\xff" * 40) == ("unknown", "another stagegpt run")
