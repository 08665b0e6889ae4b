"""A run dir and what lives in it: step checkpoints, metrics, the temp files of killed writers.

    RUN/checkpoints/step_00000500/   a complete checkpoint every --ckpt-every steps (the
                                     newest KEEP are kept)
    RUN/best/                        the checkpoint with the best validation loss
    RUN/metrics.jsonl, RUN/loss.png  one row per step; the curves
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
from pathlib import Path

from stagegpt.errors import StagegptError
from stagegpt.fileio import (
    JSON_ERRORS,
    ensure_dir,
    readable_dir,
    recover_dir,
    remove_dead_writers_tmp,
)
from stagegpt.train.checkpoints import CONFIG_FILE
from stagegpt.values import is_int, is_path, is_real

STEP_DIR = re.compile(r"^step_(\d+)$")
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".lock"
PRUNED = re.compile(r"\.step_\d+\.tmp")  # where a prune moves a checkpoint to delete it


def holder(text: bytes) -> tuple[str, str]:
    """(PID, what it runs) from a lock file's lines, for a message only: whatever it holds
    is shown as printable ASCII, shortened."""
    pid, _, kind = text.decode("ascii", "replace").partition("\n")
    kind = "".join(c for c in kind.strip() if c.isprintable())[:30]
    pid = "".join(c for c in pid if c.isdigit())[:20]
    return pid or "unknown", f"a {kind}" if kind else "another stagegpt run"


class RunLock:
    """One process at a time in a run dir: an exclusive `flock` on RUN/.lock, held from
    `acquire()` to `release()`.

    The kernel drops the lock when its process dies, SIGKILL included, so a dead holder
    never blocks a later run; the file holds the holder's PID and what it runs (a
    training run, a ladder) only to name it.
    """

    def __init__(self, run_dir: str | Path, what: str = "training run"):
        self.run_dir, self.what = Path(run_dir), what
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        if self.fd is not None:
            return self
        ensure_dir(self.run_dir)
        fd = os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, kind = holder(os.pread(fd, 64, 0))
            os.close(fd)
            raise StagegptError(
                f"{self.run_dir} is in use by process {pid} ({kind}); wait for it to finish "
                "or stop it, or choose another `out_dir`", mentions=("out_dir",)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{self.what}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None

    def check_free(self) -> None:
        """Refuse now if another process holds the run dir (the lock is not kept)."""
        if self.fd is None and (self.run_dir / LOCK_FILE).exists():
            self.acquire()
            self.release()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_apart(data_dir: Path, out_dir: Path, param: str = "out_dir",
                what: str = "data dir") -> None:
    """Refuse an output dir that is the data dir (or another input: `what`), inside it, or
    holds it: checkpoints would be written among, or over, what is read."""
    data, out = data_dir.resolve(), out_dir.resolve()
    if out == data or data in out.parents:
        where = f"is the {what}" if out == data else f"is inside the {what} {data_dir}"
        raise StagegptError(f"{param} {out_dir} {where}; choose an output dir outside it",
                            param)
    if out in data.parents:
        raise StagegptError(f"{param} {out_dir} holds the {what} {data_dir}; choose an "
                            "output dir that does not contain it", param)


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:08d}"


def step_dirs(run_dir: Path) -> list[Path]:
    """Complete step checkpoints under `run_dir/checkpoints`, oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := STEP_DIR.match(p.name)) and (p / CONFIG_FILE).is_file()]
    return [p for _, p in sorted(found)]


def resolve_checkpoint_dir(path: str | Path, param: str = "path",
                           kinds: str = "checkpoint or run") -> Path:
    """A checkpoint dir itself, or a run dir (its newest step checkpoint). `param` and
    `kinds` say, if `path` is no path at all, which argument it was and what it takes."""
    if not is_path(path):
        raise StagegptError(f"{param} must name a {kinds} directory, got {path!r:.40}", param)
    path = readable_dir(path)
    if (path / CONFIG_FILE).is_file():
        return path
    if not path.exists():
        raise StagegptError(f"checkpoint {path} does not exist; pass a checkpoint or run dir")
    found = step_dirs(path)
    if found:
        return found[-1]
    raise StagegptError(
        f"{path} holds no checkpoint (no {CONFIG_FILE}); pass a dir written by `stagegpt train`"
    )


def run_exists(out_dir: Path) -> bool:
    return (out_dir / METRICS_FILE).exists() or bool(step_dirs(out_dir))


ROW_NUMBERS = ("tokens", "train_loss", "lr", "tokens_per_sec", "elapsed")


def _is_row(row: object) -> bool:
    """A metrics row as a trainer writes it: a step, its numbers, a val loss or None."""
    return (isinstance(row, dict) and is_int(row.get("step"))
            and all(is_real(row.get(key)) for key in ROW_NUMBERS)
            and (row.get("val_loss") is None or is_real(row["val_loss"])))


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of RUN_DIR/metrics.jsonl. A damaged line (say, torn by a kill mid-write, or
    edited into something else) is skipped: the checkpoint, not this log, is the truth
    about where training stands."""
    path = Path(run_dir) / METRICS_FILE
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(*JSON_ERRORS):
                row = json.loads(line)
                if _is_row(row):
                    rows.append(row)
    return rows


def prune_step_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` step checkpoints."""
    for old in step_dirs(run_dir)[:-keep]:
        # Hide it first, so a crash mid-delete never leaves a half checkpoint in view.
        doomed = old.with_name(f".{old.name}.tmp")
        os.replace(old, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def clean_stale_temp_dirs(run_dir: Path) -> None:
    """Remove what killed writers left behind (complete checkpoints are untouched). Runs
    under the run's lock, so no other live process is writing here; a temp checkpoint dir
    still goes only if its writer (the PID in its name) is this process or a dead one."""
    recover_dir(run_dir / "best")
    remove_dead_writers_tmp(run_dir)
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir():
        remove_dead_writers_tmp(checkpoints)
        for doomed in checkpoints.glob(".step_*.tmp"):
            if PRUNED.fullmatch(doomed.name):  # a prune interrupted mid-delete
                shutil.rmtree(doomed, ignore_errors=True)
    for stale in run_dir.glob(".*.tmp"):  # a half-written metrics.jsonl or loss.png
        if stale.is_file():
            stale.unlink(missing_ok=True)
