"""The stage notebooks: stored without outputs, and executed top to bottom.

Each notebook trains with `STAGEGPT_NB_STEPS` steps (set small here), so each runs in well
under 90 s on 2 cores; a cell that takes longer than that fails the test. The notebooks
prepare the shared data dir `data/shakespeare_char` themselves (`--if-missing`). Skip
them in a quick local run with `pytest -k "not notebook"`.
"""

import re
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
STEPS = "300"  # training steps per run inside the notebooks (the ladder gets a third)
CELL_TIMEOUT = 90  # seconds


def test_the_notebooks_in_order():
    assert [p.stem for p in NOTEBOOKS] == [
        "01_minimal_lm", "02_positional_lm", "03_attention_lm", "04_block_lm",
        "05_gpt_decoder", "06_modern_decoder", "07_finetune",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_takes_its_model_from_the_package(path):
    """The model code a learner reads is the package's: a notebook shows it (getsource),
    never a copy of it."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not re.search(r"^\s*class \w+", cell.source, re.M), cell.source[:200]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STAGEGPT_NB_STEPS", STEPS)  # the kernel inherits the environment
    monkeypatch.setenv("STAGEGPT_NB_RUNS", str(tmp_path))  # runs land in pytest's tmp dir
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    errors = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
              if o.output_type == "error"]
    assert not errors
    with capsys.disabled():
        print(f"\n{path.name}: executed in {elapsed:.1f} s")
