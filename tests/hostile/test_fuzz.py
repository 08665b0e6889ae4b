"""Fuzzing the JSON files that come from outside: any value of any type in any field of
config.json, trainer_state.json or meta.json ends in exit 0 or a one-line exit 2, never a
traceback and never a crash of the process."""

import itertools
import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from world import RESUME, SAMPLE, TRAIN, make_world, newest

from stagegpt.cli import main

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                  max_size=3),
    max_leaves=6)
FUZZ = settings(max_examples=30, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
FRESH = itertools.count()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return make_world(tmp_path_factory.mktemp("fuzz"))


def run_with(path: Path, field: str, value, argv: list[str], capsys) -> None:
    original = path.read_bytes()
    data = json.loads(original)
    if isinstance(data, dict):
        data[field] = value
    path.write_text(json.dumps(data))
    try:
        capsys.readouterr()
        status = main(argv)  # anything but StagegptError / OSError would escape here
        err = [line for line in capsys.readouterr().err.splitlines()
               if not line.startswith(("resuming from ", "note: "))]
        assert status in (0, 2), (field, value, status)
        assert status == 0 or len(err) == 1, (field, value, err)
    finally:
        path.write_bytes(original)


def fields(path: Path) -> list[str]:
    return [*json.loads(path.read_text()), "extra"]


@FUZZ
@given(data=st.data())
def test_config_json(world, capsys, data):
    path = newest(world) / "config.json"
    field = data.draw(st.sampled_from(fields(path)))
    run_with(path, field, data.draw(JSON), [a.format(w=world) for a in SAMPLE], capsys)


@FUZZ
@given(data=st.data())
def test_trainer_state_json(world, capsys, data):
    path = newest(world) / "trainer_state.json"
    field = data.draw(st.sampled_from(fields(path)))
    run_with(path, field, data.draw(JSON), [a.format(w=world) for a in RESUME], capsys)


@FUZZ
@given(data=st.data())
def test_meta_json(world, capsys, data):
    path = world / "data" / "meta.json"
    field = data.draw(st.sampled_from(fields(path)))
    argv = [a.format(w=world).replace(f"{world}/run", f"{world}/fresh{next(FRESH)}")
            for a in TRAIN]
    argv[argv.index("--max-steps") + 1] = "1"
    run_with(path, field, data.draw(JSON), argv, capsys)
