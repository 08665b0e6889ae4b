"""A world to break, and the check every hostile input must pass: exit 2, one line that
says what was wrong, and nothing on disk changed.

The world: a Markov data dir; `run`, a 3-step stage 5 run stopped after step 2 (its newest
checkpoint is step 2, so `--resume` has work to do); `wide`, a run of another width; `hf`,
`run`'s Hugging Face export.
"""

import json
import re
import shutil
from pathlib import Path

from stagegpt.cli import main
from stagegpt.data.prepare import prepare_markov
from stagegpt.train.rundir import step_dirs

MICRO = ["--n-layer", "1", "--n-head", "1", "--n-embd", "16", "--block-size", "8",
         "--batch-size", "2", "--no-progress"]
TRAIN = ["train", "--stage", "5", "--data", "{w}/data", "--out", "{w}/run", "--max-steps", "3",
         "--ckpt-every", "1", "--eval-every", "1", "--eval-batches", "1", "--warmup-steps", "1",
         *MICRO]
RESUME = [*TRAIN, "--resume"]
SAMPLE = ["sample", "--ckpt", "{w}/run", "--max-new-tokens", "3", "--seed", "0"]


def make_world(root: Path) -> Path:
    prepare_markov(root / "data", order=1, vocab=16, tokens=4000, seed=3)
    assert main([a.format(w=root) for a in TRAIN]) == 0
    shutil.rmtree(step_dirs(root / "run")[-1])
    wide = [a.format(w=root).replace(f"{root}/run", f"{root}/wide") for a in TRAIN]
    assert main([*wide, "--n-embd", "32"]) == 0
    assert main(["convert", "--to-hf", "--ckpt", str(root / "run"), "--out",
                 str(root / "hf")]) == 0
    return root


def newest(w: Path) -> Path:
    return step_dirs(w / "run")[-1]


def read_tree(root: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and directory (None) under `root`, by relative path."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*")) if not p.is_fifo()}


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def copy_world(pristine: Path, tmp_path: Path) -> Path:
    w = tmp_path / "w"
    shutil.copytree(pristine, w, symlinks=True)
    return w


def assert_refused(argv: list[str], w: Path, pattern: str, capsys) -> str:
    """Run `stagegpt argv` in `w`: exit 2, one line matching `pattern`, nothing changed."""
    before = read_tree(w)
    capsys.readouterr()
    status = main([a.format(w=w) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines()
             if not line.startswith(("resuming from ", "note: "))]
    assert status == 2, (status, err)
    assert len(lines) == 1 and lines[0].startswith(f"stagegpt {argv[0]}: error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    assert read_tree(w) == before, "a refused command changed files or left some behind"
    return lines[0]
