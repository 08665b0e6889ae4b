"""A run dir and what lives in it: step checkpoints, metrics, the temp files of killed writers.

    RUN/checkpoints/step_00000500/   a complete checkpoint every --ckpt-every steps (the
                                     newest KEEP are kept)
    RUN/best/                        the checkpoint with the best validation loss
    RUN/metrics.jsonl, RUN/loss.png  one row per step; the curves
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

from stagegpt.errors import StagegptError
from stagegpt.fileio import readable_dir, recover_dir
from stagegpt.train.checkpoints import CONFIG_FILE

STEP_DIR = re.compile(r"^step_(\d+)$")
METRICS_FILE = "metrics.jsonl"


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


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """A checkpoint dir itself, or a run dir (its newest step checkpoint)."""
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


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of RUN_DIR/metrics.jsonl. A damaged line (say, torn by a kill mid-write) is
    skipped: the checkpoint, not this log, is the truth about where training stands."""
    path = Path(run_dir) / METRICS_FILE
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                row = json.loads(line)
                if isinstance(row, dict) and isinstance(row.get("step"), int):
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
    """Remove temp dirs a killed run left behind (complete checkpoints are untouched)."""
    recover_dir(run_dir / "best")
    for root in (run_dir, run_dir / "checkpoints"):
        if root.is_dir():
            for stale in root.glob(".*.tmp"):
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
                else:  # a half-written metrics.jsonl or loss.png
                    stale.unlink(missing_ok=True)
