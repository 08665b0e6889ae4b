"""Reliability: killed runs lose nothing, bad input is one line, no pickle ever runs code.

- The soak SIGKILLs `stagegpt train` at seeded random moments, most of them inside a write
  (before or after the n-th rename, fsync, delete, safetensors or torch.save call, or with
  that file torn in half), some from outside at a random time or as soon as a temporary
  checkpoint dir appears. After each kill every visible checkpoint loads, and `--resume`
  ends with the weights and losses of a run that was never interrupted, bit for bit.
- The bad-input table runs every verb on broken files, mismatched settings, out-of-range
  flags, an output path that cannot be created and a disk that fills up or turns
  read-only: exit code 2, one line on stderr, and every file that was there is unchanged
  (nothing added, not even a temporary file).
- Crafted pickles that would create a file when unpickled are refused wherever a pickle
  is expected.
- Tokenizers are fuzzed on arbitrary text, on random bytes decoded with replacement and
  on random ids (tests/test_tokenizers.py already round-trips arbitrary text through
  gpt2 and bpe).
"""

import contextlib
import errno
import io
import json
import multiprocessing
import os
import pickle
import random
import re
import shutil
import signal
import stat
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from stagegpt.cli import main
from stagegpt.data.tokenizers import CharTokenizer, get_tokenizer
from stagegpt.errors import StagegptError
from stagegpt.interop import load_checkpoint
from stagegpt.train.checkpoints import load_optimizer_state
from stagegpt.train.rundir import step_dirs

MICRO = ["--n-layer", "1", "--n-head", "1", "--n-embd", "16", "--block-size", "8",
         "--batch-size", "2"]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread of a busy machine, and the soak's children
    and in-process runs must use the same count for their floats to agree bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield 1
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(markov_data) -> Path:
    return markov_data(order=1, vocab=16, tokens=4000, seed=3)


def read_tree(root: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and directory (None) under `root`, by relative path."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


# ---------------------------------------------------------------------------------------
# Crash-safety soak

SOAK_STEPS = 10


def soak_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--stage", "5", "--data", str(data), "--out", str(out),
            "--max-steps", str(SOAK_STEPS), "--ckpt-every", "1", "--eval-every", "3",
            "--eval-batches", "1", "--warmup-steps", "2", "--dropout", "0.1", "--no-progress",
            *MICRO, *extra]


def write_points() -> dict[str, tuple[object, str]]:
    """The calls every file the trainer writes goes through: (owner, attribute)."""
    import stagegpt.train.checkpoints

    return {"rename": (os, "replace"), "fsync": (os, "fsync"), "delete": (shutil, "rmtree"),
            "safetensors": (stagegpt.train.checkpoints, "save_file"), "torch.save": (torch, "save")}


def tear(target) -> None:
    """Cut a just-written file to half its length, as a crash mid-write would leave it."""
    if isinstance(target, str | os.PathLike):
        os.truncate(target, os.path.getsize(target) // 2)
    else:  # the open file torch.save wrote to
        target.flush()
        target.truncate(target.tell() // 2)


def soak_child(argv: list[str], threads: int, kill: tuple[str, int, str] | None) -> None:
    """One trial's training process. With `kill = (point, n, how)` it SIGKILLs itself at
    the n-th call of that write point: "before" it, "after" it, or after it with the
    written file "torn" in half."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    torch.set_num_threads(threads)
    if kill is not None:
        point, n, how = kill
        owner, attr = write_points()[point]
        real, calls = getattr(owner, attr), [0]

        def hooked(*args, **kwargs):
            calls[0] += 1
            if calls[0] == n and how == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            result = real(*args, **kwargs)
            if calls[0] == n:
                if how == "torn":
                    tear(args[1])
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        setattr(owner, attr, hooked)
    main(argv)


def count_write_calls(monkeypatch, run) -> dict[str, int]:
    """How often an uninterrupted run calls each write point."""
    counts = dict.fromkeys(write_points(), 0)
    for point, (owner, attr) in write_points().items():
        real = getattr(owner, attr)

        def counting(*args, _real=real, _point=point, **kwargs):
            counts[_point] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(owner, attr, counting)
    run()
    monkeypatch.undo()
    return counts


def losses(run_dir: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train_loss"], r["val_loss"]) for r in rows]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(step_dirs(run_dir)[-1] / "model.safetensors"))


def kill_from_outside(process, out: Path, rng: random.Random, seconds: float, mode: str) -> None:
    """SIGKILL after a random delay, or ("tmp") as soon as a temporary dir shows up after it."""
    time.sleep(rng.uniform(0.05, 0.9) * seconds)
    deadline = time.monotonic() + 2 * seconds
    while mode == "tmp" and process.is_alive() and time.monotonic() < deadline:
        roots = [out, out / "checkpoints"]
        with contextlib.suppress(FileNotFoundError):
            if any(p.name.endswith(".tmp") for root in roots for p in root.iterdir()):
                break
    if process.is_alive():
        process.kill()


@pytest.fixture
def soak_dir(tmp_path):
    """A RAM-backed dir when there is one: a SIGKILL loses nothing the kernel already has,
    so fsync only adds disk waits here (hundreds of them per trial on a busy disk)."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    directory = Path(tempfile.mkdtemp(prefix="stagegpt-soak-", dir=shm))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_sigkill_soak_resume_is_bit_exact(data, soak_dir, monkeypatch, one_thread, capsys):
    """26 trials: 20 killed inside a write at a seeded random call, 6 from outside."""
    tmp_path = soak_dir
    reference = tmp_path / "reference"
    counts = count_write_calls(monkeypatch, lambda: main(soak_argv(data, reference)))
    assert all(counts.values()), counts
    expected_weights, expected_losses = final_weights(reference), losses(reference)
    assert len(expected_losses) == SOAK_STEPS

    # Children fork from a server that has imported torch and stagegpt but never computed:
    # cheap to start (no import per trial) and safe to fork (no OpenMP threads yet).
    # torch._dynamo is what the optimizer imports on first use (1-2 s per child otherwise).
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__, "torch._dynamo"])

    def child(out, kill=None):
        process = ctx.Process(target=soak_child, args=(soak_argv(data, out), one_thread, kill))
        process.start()
        return process

    started = time.monotonic()
    whole = child(tmp_path / "whole")  # the forked path itself matches the reference
    whole.join(120)
    seconds = time.monotonic() - started
    assert whole.exitcode == 0
    assert losses(tmp_path / "whole") == expected_losses

    rng = random.Random(20240610)
    trials = [("inside", rng.choice(sorted(counts))) for _ in range(20)]
    trials += [("outside", mode) for mode in ("timer", "tmp") * 3]
    killed = 0
    for i, (kind, what) in enumerate(trials):
        out = tmp_path / f"trial{i:02d}"
        if kind == "inside":
            hows = ["before", "after"] + (["torn"] if what in ("safetensors", "torch.save")
                                          else [])
            kill = (what, rng.randint(1, counts[what]), rng.choice(hows))
            process = child(out, kill)
            process.join(120)
        else:
            kill = what
            process = child(out)
            kill_from_outside(process, out, rng, seconds, what)
            process.join(120)
        assert process.exitcode is not None, f"trial {i} ({kill}) hung"
        assert process.exitcode in (0, -signal.SIGKILL), (i, kill, process.exitcode)
        killed += process.exitcode == -signal.SIGKILL
        if kind == "inside":
            assert process.exitcode == -signal.SIGKILL, f"trial {i}: {kill} was never reached"

        for directory in step_dirs(out):  # every checkpoint in view is whole
            load_checkpoint(directory)
        if (out / "best").exists() or (out / ".best.old").exists():
            load_checkpoint(out / "best")
        assert main(soak_argv(data, out, "--resume")) == 0, (i, kill)
        assert losses(out) == expected_losses, (i, kill)
        weights = final_weights(out)
        assert weights.keys() == expected_weights.keys()
        for name, tensor in expected_weights.items():
            assert torch.equal(weights[name], tensor), (i, kill, name)
        leftovers = [p.name for p in out.rglob("*") if p.name.endswith((".tmp", ".old"))]
        assert leftovers == [], (i, kill, leftovers)
        shutil.rmtree(out)
    assert killed >= 20, killed
    capsys.readouterr()


# ---------------------------------------------------------------------------------------
# Bad input: one line, exit code 2, nothing changed


@pytest.fixture(scope="module")
def pristine(data, tmp_path_factory, one_thread) -> Path:
    """A world to break: a data dir, a stage 5 run of 3 steps stopped after 2 (its newest
    checkpoint is step 2), its Hugging Face export, a text file and a bad TOML config."""
    root = tmp_path_factory.mktemp("pristine")
    shutil.copytree(data, root / "data")
    assert main([a.format(w=root) for a in TRAIN]) == 0
    shutil.rmtree(step_dirs(root / "run")[-1])
    assert main(["convert", "--to-hf", "--ckpt", str(root / "run"), "--out",
                 str(root / "hf")]) == 0
    (root / "notes.txt").write_text("the cat sat on the mat\n" * 20)
    (root / "binary.bin").write_bytes(bytes(range(256)) * 4)
    return root


def newest(w: Path) -> Path:
    return step_dirs(w / "run")[-1]


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def retype_weights(path: Path, dtype: torch.dtype) -> None:
    """Rewrite a safetensors file with every tensor cast to `dtype`."""
    save_file({k: v.to(dtype) for k, v in load_file(path).items()}, str(path))


def poison_weight(path: Path, value: float) -> None:
    """Rewrite a safetensors file with one value of its first tensor set to `value`."""
    weights = load_file(path)
    next(iter(weights.values())).view(-1)[0] = value
    save_file(weights, str(path))


def sparse_pickled_hf(w: Path) -> None:
    """The Hugging Face export as a pytorch_model.bin of sparse tensors."""
    weights = load_file(w / "hf" / "model.safetensors")
    (w / "hf" / "model.safetensors").unlink()
    torch.save({k: v.to_sparse() for k, v in weights.items()}, w / "hf" / "pytorch_model.bin")


def edit_optimizer_group(w: Path, **changes) -> None:
    state = torch.load(newest(w) / "optimizer.pt", weights_only=True)
    state["param_groups"][0].update(changes)
    torch.save(state, newest(w) / "optimizer.pt")


def truncate(path: Path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def disk_error(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return fail


def fail_final_swap(w: Path, code: int):
    """An os.replace that fails only when a finished temporary dir is renamed into place
    inside `w`: after the old version was moved aside, the worst moment."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if str(dst).startswith(str(w)) and str(src).endswith(".tmp") and Path(src).is_dir():
            raise OSError(code, os.strerror(code), str(src), None, str(dst))
        return real(src, dst, *args, **kwargs)
    return replace


def safetensors_disk_full(tensors, filename, metadata=None):
    """What safetensors raises when the disk fills up mid-file (half the file is written)."""
    Path(filename).write_bytes(b"\0" * 100)
    raise SafetensorError("Error while serializing: I/O error: No space left on device "
                          "(os error 28)")


TRAIN = ["train", "--stage", "5", "--data", "{w}/data", "--out", "{w}/run", "--max-steps", "3",
         "--ckpt-every", "1", "--eval-every", "1", "--eval-batches", "1", "--warmup-steps", "1",
         "--no-progress", *MICRO]
RESUME = [*TRAIN, "--resume"]
NEW_RUN = [a if a != "{w}/run" else "{w}/run2" for a in TRAIN]
SAMPLE = ["sample", "--ckpt", "{w}/run", "--max-new-tokens", "3", "--seed", "0"]
TO_HF = ["convert", "--to-hf", "--ckpt", "{w}/run", "--out", "{w}/exported"]
FROM_HF = ["convert", "--from-hf", "{w}/hf", "--no-tokenizer", "--out", "{w}/imported"]
MARKOV = ["prepare", "markov", "--order", "1", "--vocab", "16", "--tokens", "4000", "--seed", "4",
          "--out", "{w}/data", "--force"]


def patch(target: str, value):
    """A setup step that swaps in a failing writer (undone before the files are compared)."""
    return lambda w, mp: mp.setattr(target, value)


BAD_INPUTS = {
    # prepare
    "prepare: --out under a regular file": (
        ["prepare", "text", "{w}/notes.txt", "--tokenizer", "char", "--out",
         "{w}/notes.txt/data"], None, "cannot create directory"),
    "prepare: --val-fraction out of range": (
        ["prepare", "text", "{w}/notes.txt", "--tokenizer", "char", "--val-fraction", "1.5",
         "--out", "{w}/new"], None, "--val-fraction must be between 0 and 1"),
    "prepare: genre --max-chars 0": (
        ["prepare", "genre", "--tokenizer", "char", "--max-chars", "0", "--out", "{w}/new"],
        None, "--max-chars must be at least 1, got 0"),
    "prepare: chat shakespeare with chatterbot's --val-fraction": (
        ["prepare", "chat", "--source", "shakespeare", "--tokenizer", "char", "--val-fraction",
         "0.3", "--out", "{w}/new"], None, "--val-fraction splits chatterbot's conversations"),
    "prepare: chat shakespeare with --test-fraction nan": (
        ["prepare", "chat", "--source", "shakespeare", "--tokenizer", "char", "--test-fraction",
         "nan", "--out", "{w}/new"], None, "--test-fraction splits chatterbot's"),
    "prepare: --tokenizer bpe below its minimum": (
        ["prepare", "text", "{w}/notes.txt", "--tokenizer", "bpe:8", "--out", "{w}/new"],
        None, "bpe:N needs N"),
    "prepare: disk full replacing a data dir": (
        MARKOV, patch("os.fsync", disk_error(errno.ENOSPC)), "No space left on device"),
    "prepare: read-only at the final rename": (
        MARKOV, lambda w, mp: mp.setattr(os, "replace", fail_final_swap(w, errno.EROFS)),
        "Read-only file system.*writable disk"),
    # train
    "train: data dir without meta.json": (
        TRAIN, lambda w, mp: (w / "data" / "meta.json").unlink(), "has no meta.json"),
    "train: empty meta.json": (
        TRAIN, lambda w, mp: (w / "data" / "meta.json").write_text(""), "not valid JSON"),
    "train: binary meta.json": (
        TRAIN, lambda w, mp: (w / "data" / "meta.json").write_bytes(bytes(range(200, 256))),
        "not valid JSON"),
    "train: missing val.bin": (
        TRAIN, lambda w, mp: (w / "data" / "val.bin").unlink(), "val.bin is missing"),
    "train: meta.json vocab disagrees with its tokenizer": (
        TRAIN, lambda w, mp: edit_json(w / "data" / "meta.json", vocab_size=8),
        "vocab_size 8 but its tokenizer has 16"),
    "train: resume with another width": (
        [*RESUME, "--n-embd", "32"], None, "cannot resume"),
    "train: resume from a truncated optimizer.pt": (
        RESUME, lambda w, mp: truncate(newest(w) / "optimizer.pt"), "refusing to load"),
    "train: resume from truncated weights": (
        RESUME, lambda w, mp: truncate(newest(w) / "model.safetensors"),
        "not a readable safetensors file"),
    "train: resume from an emptied trainer_state.json": (
        RESUME, lambda w, mp: (newest(w) / "trainer_state.json").write_text("{}"),
        "trainer_state.json is damaged"),
    "train: resume with an optimizer eps that is not the run's": (
        RESUME, lambda w, mp: edit_optimizer_group(w, eps=-1.0), "eps is -1.0, but this run's"),
    "train: resume from integer weights": (
        RESUME, lambda w, mp: retype_weights(newest(w) / "model.safetensors", torch.int64),
        "is a int64 tensor; weights must be dense float32"),
    "train: resume from a truncated trainer_state.json": (
        RESUME, lambda w, mp: truncate(newest(w) / "trainer_state.json"), "not valid JSON"),
    "train: --out under a regular file": (
        [*TRAIN[:6], "{w}/notes.txt/run", *TRAIN[7:]], None, "cannot create directory"),
    "train: negative --lr": ([*NEW_RUN, "--lr", "-1"], None, "--lr must be a finite number >= 0"),
    "train: --out is the data dir": (
        [*TRAIN[:6], "{w}/data", *TRAIN[7:]], None, "--out .*/data is the data dir"),
    "train: --out inside the data dir": (
        [*TRAIN[:6], "{w}/data/run", *TRAIN[7:]], None, "--out .* is inside the data dir"),
    "ladder: --out holding the data dir": (
        ["ladder", "--data", "{w}/data", "--out", "{w}", "--max-steps", "1", "--no-progress"],
        None, "--out .* holds the data dir"),
    "train: --config that is binary": (
        [*NEW_RUN, "--config", "{w}/binary.bin"], None, "is not UTF-8 text"),
    "train: disk full on resume": (
        RESUME, patch("os.replace", disk_error(errno.ENOSPC)), "No space left on device"),
    # sample
    "sample: empty config.json": (
        SAMPLE, lambda w, mp: (newest(w) / "config.json").write_text(""), "not valid JSON"),
    "sample: binary weights": (
        SAMPLE, lambda w, mp: (newest(w) / "model.safetensors").write_bytes(os.urandom(512)),
        "not a readable safetensors file"),
    "sample: tokenizer larger than the model": (
        SAMPLE, lambda w, mp: edit_json(newest(w) / "config.json", tokenizer={
            "kind": "char", "chars": "".join(map(chr, range(65, 105))), "vocab_size": 40}),
        "do not belong together"),
    "sample: damaged vocab.json": (
        SAMPLE, lambda w, mp: (edit_json(newest(w) / "config.json", tokenizer={"kind": "char"}),
                               (newest(w) / "vocab.json").write_text("[1, 2]")),
        "no list of single characters"),
    "sample: boolean weights": (
        SAMPLE, lambda w, mp: retype_weights(newest(w) / "model.safetensors", torch.bool),
        "is a bool tensor"),
    "sample: a NaN weight": (
        SAMPLE, lambda w, mp: poison_weight(newest(w) / "model.safetensors", float("nan")),
        "holds NaN or infinite values; the file is damaged or its run diverged"),
    "sample: binary --prompt-file": (
        [*SAMPLE, "--prompt-file", "{w}/binary.bin"], None, "cannot read prompt file"),
    "sample: a data dir as --ckpt": (
        ["sample", "--ckpt", "{w}/data"], None, "holds no checkpoint"),
    # convert
    "convert: binary Hugging Face config.json": (
        FROM_HF, lambda w, mp: (w / "hf" / "config.json").write_bytes(b"\x89PNG\0\xff"),
        "not valid JSON"),
    "convert: empty Hugging Face weights": (
        FROM_HF, lambda w, mp: (w / "hf" / "model.safetensors").write_bytes(b""),
        "not a readable safetensors file"),
    "convert: a dropout too large for a float": (
        FROM_HF, lambda w, mp: edit_json(w / "hf" / "config.json", resid_pdrop=10**400),
        r"resid_pdrop must be a number in \[0, 1\)"),
    "convert: 8-bit float weights": (
        FROM_HF, lambda w, mp: retype_weights(w / "hf" / "model.safetensors",
                                              torch.float8_e4m3fn), "is a float8_e4m3fn tensor"),
    "convert: an infinite Hugging Face weight": (
        FROM_HF, lambda w, mp: poison_weight(w / "hf" / "model.safetensors", float("inf")),
        "holds NaN or infinite values"),
    "convert: a pytorch_model.bin of sparse tensors": (
        FROM_HF, lambda w, mp: sparse_pickled_hf(w), "is a sparse_coo tensor"),
    "convert: a shard index naming a list": (
        FROM_HF, lambda w, mp: ((w / "hf" / "model.safetensors").unlink(),
                                (w / "hf" / "model.safetensors.index.json").write_text(
                                    json.dumps({"weight_map": {"a": ["x"], "b": "y"}}))),
        r"names shard \['x'\], not a file beside it"),
    "convert: missing stagegpt weights": (
        TO_HF, lambda w, mp: (newest(w) / "model.safetensors").unlink(), "is missing"),
    "convert: --out under a regular file": (
        [*TO_HF[:-1], "{w}/notes.txt/hf"], None, "cannot create directory"),
    "convert: disk full exporting": (
        TO_HF, patch("stagegpt.train.checkpoints.save_file", safetensors_disk_full),
        "No space left on device"),
    "convert: disk full importing": (
        FROM_HF, patch("stagegpt.train.checkpoints.save_file", safetensors_disk_full),
        "No space left on device"),
    "convert: permission denied creating the temporary dir": (
        TO_HF, patch("tempfile.mkdtemp", disk_error(errno.EACCES)),
        "Permission denied.*permissions"),
    # inspect
    "inspect: truncated config.json": (
        ["inspect", "--ckpt", "{w}/run"], lambda w, mp: truncate(newest(w) / "config.json"),
        "not valid JSON"),
    "inspect: config.json for another shape": (
        ["inspect", "--ckpt", "{w}/run"],
        lambda w, mp: edit_json(newest(w) / "config.json", model={
            **json.loads((newest(w) / "config.json").read_text())["model"], "n_embd": 32}),
        "disagree|does not match"),
    "inspect: unknown stage in config.json": (
        ["inspect", "--ckpt", "{w}/run"],
        lambda w, mp: edit_json(newest(w) / "config.json", stage=99), "stage must be one of"),
    "inspect: --seq beyond the context": (
        ["inspect", "--ckpt", "{w}/run", "--seq", "9"], None, "--seq must be between 1 and"),
    "inspect: unknown preset": (
        ["inspect", "--stage", "3", "--preset", "gpt5"], None, "unknown preset"),
    "inspect: missing checkpoint": (
        ["inspect", "--ckpt", "{w}/nowhere"], None, "does not exist"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, pristine, tmp_path,
                                                          monkeypatch, capsys):
    argv, setup, message = BAD_INPUTS[case]
    w = tmp_path / "w"
    shutil.copytree(pristine, w)
    if setup is not None:
        setup(w, monkeypatch)
    before = read_tree(w)
    capsys.readouterr()
    status = main([a.format(w=w) for a in argv])
    monkeypatch.undo()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines()
             if not line.startswith(("resuming from ", "note: "))]
    assert status == 2, (status, err)
    assert len(lines) == 1 and lines[0].startswith(f"stagegpt {argv[0]}: error: "), err
    assert re.search(message, lines[0]), lines[0]
    assert read_tree(w) == before, "a failed command changed files or left some behind"


# ---------------------------------------------------------------------------------------
# Pickles that would run code are refused wherever a pickle could be expected


class RunsCode:
    """A pickle payload: unpickling it calls open(marker, "w"), creating the file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_pickle(path: Path, payload, writer: str) -> None:
    with open(path, "wb") as f:
        torch.save(payload, f) if writer == "torch.save" else pickle.dump(payload, f, protocol=2)


def plant_optimizer(w: Path, payload, writer: str) -> list[str]:
    write_pickle(newest(w) / "optimizer.pt", payload, writer)
    return [a.format(w=w) for a in RESUME]


def plant_shard(w: Path, payload, writer: str) -> list[str]:
    """A sharded Hugging Face dir whose only shard is the payload."""
    shard = "pytorch_model-00001-of-00001.bin"
    (w / "hf" / "model.safetensors").unlink()
    (w / "hf" / "pytorch_model.bin.index.json").write_text(
        json.dumps({"weight_map": {"transformer.wte.weight": shard}}))
    write_pickle(w / "hf" / shard, payload, writer)
    return [a.format(w=w) for a in FROM_HF]


def plant_weights(w: Path, payload, writer: str) -> list[str]:
    write_pickle(newest(w) / "model.safetensors", payload, writer)
    return [a.format(w=w) for a in SAMPLE]


PLANTED = {"optimizer.pt": (plant_optimizer, "refusing to load .*optimizer.pt"),
           "pytorch_model.bin shard": (plant_shard, "refusing to load .*could run code"),
           "model.safetensors": (plant_weights, "not a readable safetensors file")}


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
@pytest.mark.parametrize("place", list(PLANTED))
def test_pickle_that_would_run_code_is_refused_and_never_runs(place, writer, pristine,
                                                              tmp_path, capsys):
    marker = tmp_path / "pwned"
    payload = {"state": {0: RunsCode(marker)}, "param_groups": [],
               "transformer.wte.weight": RunsCode(marker)}
    live = tmp_path / "live.pt"  # the payload is real: an unsafe load does run it ...
    write_pickle(live, payload, writer)
    with open(live, "rb") as f:
        torch.load(f, weights_only=False) if writer == "torch.save" else pickle.load(f)
    assert marker.exists()
    marker.unlink()

    w = tmp_path / "w"
    shutil.copytree(pristine, w)
    plant, message = PLANTED[place]
    argv = plant(w, payload, writer)
    before = read_tree(w)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err), err
    assert not marker.exists()  # ... stagegpt never does
    assert read_tree(w) == before
    if place == "optimizer.pt":
        with pytest.raises(StagegptError, match="refusing to load"):
            load_optimizer_state(newest(w))
        assert not marker.exists()


# ---------------------------------------------------------------------------------------
# Other guarantees of the CLI and the writers


def test_sample_into_a_closed_pipe_ends_quietly(pristine, monkeypatch, capsys, one_thread):
    """`stagegpt sample ... | head -c 1`: the reader leaving is not an error."""

    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["sample", "--ckpt", str(pristine / "run"), "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().err == ""


def test_debug_shows_the_traceback_of_a_disk_error(pristine, tmp_path, monkeypatch):
    monkeypatch.setattr("stagegpt.train.checkpoints.save_file", safetensors_disk_full)
    with pytest.raises(OSError) as err:
        main(["--debug", "convert", "--to-hf", "--ckpt", str(pristine / "run"), "--out",
              str(tmp_path / "hf")])
    assert err.value.errno == errno.ENOSPC and str(tmp_path / "hf") in str(err.value)


def test_written_files_get_the_usual_permissions(data, pristine):
    """Temporary files are created owner-only; what is renamed into place is not."""
    mask = os.umask(0o022)
    os.umask(mask)
    run = pristine / "run"
    for path in [data, data / "train.bin", data / "meta.json", run / "metrics.jsonl",
                 run / "loss.png", run / "best", newest(pristine),
                 newest(pristine) / "model.safetensors", newest(pristine) / "optimizer.pt",
                 pristine / "hf" / "model.safetensors"]:
        expected = (0o777 if path.is_dir() else 0o666) & ~mask
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def test_an_out_that_is_a_symlink_or_the_current_dir(tmp_path, monkeypatch, capsys):
    """A symlink --out is replaced by the new directory, its target left alone and nothing
    stray beside it; `--out .` is refused in one line, before anything is written."""
    from stagegpt.cli import main
    from stagegpt.fileio import atomic_dir

    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    with atomic_dir(tmp_path / "link") as new:
        (new / "a").write_text("new")
    assert (tmp_path / "link" / "a").read_text() == "new" and not (tmp_path / "link").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "link"]
    monkeypatch.chdir(tmp_path / "empty")
    assert main(["convert", "--from-hf", "x", "--out", "."]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "names the current directory" in err


# ---------------------------------------------------------------------------------------
# Tokenizers fuzzed: arbitrary text, random bytes decoded with replacement, random ids

FUZZ = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def byte_level():
    """GPT-2's tokenizer and a small BPE trained here: every id may be part of a character."""
    corpus = "the café sat on the mat; 日本語 😀 naïve — don't\n" * 50
    gpt2 = get_tokenizer("gpt2")
    gpt2.encode("warm up")
    return {"gpt2": gpt2, "bpe": get_tokenizer("bpe:300", corpus)}


@FUZZ
@given(st.text(min_size=1))
def test_char_tokenizer_round_trips_any_unicode_it_was_built_from(text):
    tokenizer = CharTokenizer.from_text(text)
    assert tokenizer.decode(tokenizer.encode(text)) == text


@FUZZ
@given(data=st.binary(max_size=200))
def test_random_bytes_decoded_with_replacement_round_trip(byte_level, data):
    text = data.decode("utf-8", errors="replace")
    for tokenizer in [*byte_level.values(), CharTokenizer.from_text(text or "x")]:
        assert tokenizer.decode(tokenizer.encode(text)) == text


@FUZZ
@given(st.data())
def test_random_ids_decode_without_raising_and_stream_the_same_text(byte_level, data):
    for tokenizer in byte_level.values():
        ids = data.draw(st.lists(st.integers(0, tokenizer.vocab_size - 1), max_size=30))
        text = tokenizer.decode(ids)
        assert text == tokenizer.decode_bytes(ids).decode("utf-8", errors="replace")
        stream = tokenizer.stream_decoder()
        assert "".join(stream.push([i]) for i in ids) + stream.flush() == text


@FUZZ
@given(st.data())
def test_ids_outside_the_vocabulary_are_only_ever_a_stagegpt_error(byte_level, data):
    for tokenizer in byte_level.values():
        V = tokenizer.vocab_size
        ids = data.draw(st.lists(st.integers(-3, V + 3), min_size=1, max_size=10))
        if all(0 <= i < V for i in ids):
            assert isinstance(tokenizer.decode(ids), str)
        else:
            with pytest.raises(StagegptError, match="outside"):
                tokenizer.decode(ids)
