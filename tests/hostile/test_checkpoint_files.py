"""Crafted checkpoint dirs: config.json, the weights, the tokenizer's files, optimizer.pt
and trainer_state.json. Each is refused with one line, exit 2, nothing changed."""

import base64
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from world import RESUME, SAMPLE, assert_refused, copy_world, edit_json, make_world, newest

from stagegpt.cli import main
from stagegpt.train.rundir import step_dirs


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, one_thread) -> Path:  # the thread count is restored after
    return make_world(tmp_path_factory.mktemp("hostile"))


def config_json(w):
    return newest(w) / "config.json"


def to_device(path):
    path.unlink()
    os.symlink("/dev/zero", path)


def edit_model(w, **changes):
    model = json.loads(config_json(w).read_text())["model"]
    edit_json(config_json(w), model={**model, **changes})


CONFIG_CASES = {
    "stage as a string": (lambda w: edit_json(config_json(w), stage="5"), "stage must be one of"),
    "stage true": (lambda w: edit_json(config_json(w), stage=True), "stage must be one of"),
    "model not a table": (lambda w: edit_json(config_json(w), model=[1, 2]),
                          "not a stagegpt checkpoint config"),
    "dropout as a string": (lambda w: edit_model(w, dropout="0.1"), "dropout must be a number"),
    "n_embd negative": (lambda w: edit_model(w, n_embd=-16), "n_embd must be a positive"),
    "n_embd a float": (lambda w: edit_model(w, n_embd=16.0), "n_embd must be a positive"),
    "unknown model key": (lambda w: edit_model(w, n_experts=8), "unknown model config keys"),
    "a trillion-token vocabulary": (lambda w: edit_model(w, vocab_size=10**12),
                                    "needs .* GB of memory but this machine has"),
    "a context of 10**11 positions": (lambda w: edit_model(w, block_size=10**11),
                                      "needs .* GB of memory"),
    "a width whose bytes overflow 64 bits": (lambda w: edit_model(w, n_embd=10**12, n_head=1),
                                             "too large for any machine"),
    "a width of 10**30": (lambda w: edit_model(w, n_embd=10**30, n_head=1),
                          "n_embd must be a positive integer up to 2\\*\\*40"),
    "a billion layers (sized, not built)": (lambda w: edit_model(w, n_layer=10**9),
                                            "needs .* GB of memory"),
    "an integer of 5,000 digits": (
        lambda w: config_json(w).write_text('{"stage": 1' + "0" * 5000 + "}"),
        "not valid JSON \\(an integer with more than 4,300 digits\\)"),
    "tokenizer file outside the dir": (
        lambda w: edit_json(config_json(w), tokenizer={"kind": "bpe", "file": "../../notes"}),
        "not a plain file name"),
    "tokenizer file absolute": (
        lambda w: edit_json(config_json(w), tokenizer={"kind": "bpe", "file": "/dev/zero"}),
        "not a plain file name"),
    "tokenizer file a device": (
        lambda w: (os.symlink("/dev/zero", newest(w) / "tok.json"),
                   edit_json(config_json(w), tokenizer={"kind": "bpe", "file": "tok.json"})),
        "is a device, not a file"),
    "tokenizer file a list": (
        lambda w: edit_json(config_json(w), tokenizer={"kind": "bpe", "file": ["a"]}),
        "not a plain file name"),
    "tokenizer spec a string": (lambda w: edit_json(config_json(w), tokenizer="char"),
                                "unknown tokenizer spec"),
    "config.json a device": (lambda w: to_device(config_json(w)),
                             "holds no checkpoint|is a device, not a file"),
    "config.json of 100 MB": (
        lambda w: config_json(w).write_bytes(b" " * (100 << 20)), "more than the"),
    "config.json nested 100,000 deep": (
        lambda w: config_json(w).write_text("[" * 100_000 + "]" * 100_000), "not valid JSON"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_crafted_config_json_is_refused(case, pristine, tmp_path, capsys):
    setup, pattern = CONFIG_CASES[case]
    w = copy_world(pristine, tmp_path)
    setup(w)
    assert_refused(SAMPLE, w, pattern, capsys)


def swap_optimizer(w, state):
    torch.save(state, newest(w) / "optimizer.pt")


def wide_optimizer(w):
    return torch.load(step_dirs(w / "wide")[-1] / "optimizer.pt", weights_only=True)


def edited_optimizer(w, edit):
    state = torch.load(newest(w) / "optimizer.pt", weights_only=True)
    edit(state)
    swap_optimizer(w, state)


OPTIMIZER_CASES = {
    "from a wider run": (lambda w: swap_optimizer(w, wide_optimizer(w)), "does not fit"),
    "a bare tensor": (lambda w: swap_optimizer(w, torch.zeros(3)), "not an optimizer state"),
    "one group too many": (
        lambda w: edited_optimizer(w, lambda s: s["param_groups"].append(
            dict(s["param_groups"][0]))), "expected 2 parameter groups"),
    "a moment of the wrong dtype": (
        lambda w: edited_optimizer(w, lambda s: s["state"][0].update(
            exp_avg=s["state"][0]["exp_avg"].double())), "exp_avg is not a dense torch.float32"),
    "a moment of the wrong shape": (
        lambda w: edited_optimizer(w, lambda s: s["state"][0].update(
            exp_avg_sq=s["state"][0]["exp_avg_sq"][:1])), "exp_avg_sq is not"),
    "state for a parameter it lacks": (
        lambda w: edited_optimizer(w, lambda s: s["state"].update({999: s["state"][0]})),
        "parameters this model does not have"),
    "lr as a string": (
        lambda w: edited_optimizer(w, lambda s: s["param_groups"][0].update(lr="1e-3")),
        "lr is '1e-3', not a float"),
    "a negative step": (
        lambda w: edited_optimizer(w, lambda s: s["state"][0].update(
            step=torch.tensor(-5.0))), "step is not a count"),
}


@pytest.mark.parametrize("case", list(OPTIMIZER_CASES))
def test_optimizer_state_must_fit_the_model(case, pristine, tmp_path, capsys):
    setup, pattern = OPTIMIZER_CASES[case]
    w = copy_world(pristine, tmp_path)
    setup(w)
    assert_refused(RESUME, w, pattern, capsys)


def edit_state(**changes):
    return lambda w: edit_json(newest(w) / "trainer_state.json", **changes)


STATE_CASES = {
    "negative step": (edit_state(step=-1), "step -1"),
    "step of another checkpoint": (edit_state(step=7), "step 7 in step_00000002"),
    "step as a string": (edit_state(step="2"), "step is '2', not a int"),
    "tokens many": (edit_state(tokens="many"), "tokens is 'many'"),
    "elapsed nan": (lambda w: (newest(w) / "trainer_state.json").write_text(
        (newest(w) / "trainer_state.json").read_text().replace('"elapsed": ',
                                                               '"elapsed": NaN, "x": ')),
        "a negative or infinite time"),
    "tokens beyond any step": (edit_state(tokens=10**40), "1e\\+40 tokens in 2 steps"),
    "tokens negative": (edit_state(tokens=-5), "-5 tokens in 2 steps"),
    "best_val a list": (edit_state(best_val=[1]), "best_val is"),
    "rng state not base64": (edit_state(torch_rng="not base64!"), "an RNG state"),
    "rng state that no generator takes": (
        edit_state(torch_rng=base64.b64encode(b"\xff" * torch.get_rng_state().numel()).decode()),
        "not a generator state"),
    "rng state of the wrong size": (
        edit_state(data_rng=base64.b64encode(b"\0" * 10).decode()), "10 bytes where"),
    "a list instead of a table": (
        lambda w: (newest(w) / "trainer_state.json").write_text("[]"), "not a table"),
    "ranks' rng states not a list": (edit_state(torch_rng_ranks="x"),
                                     "torch_rng_ranks is not a list of RNG states"),
    "a rank's rng state damaged": (edit_state(torch_rng_ranks=["not base64!"]), "an RNG state"),
}


@pytest.mark.parametrize("case", list(STATE_CASES))
def test_trainer_state_is_checked_field_by_field(case, pristine, tmp_path, capsys):
    setup, pattern = STATE_CASES[case]
    w = copy_world(pristine, tmp_path)
    setup(w)
    assert_refused(RESUME, w, pattern, capsys)


def test_resume_refuses_other_training_settings_and_keeps_the_final_checkpoint(
        pristine, tmp_path, capsys):
    w = copy_world(pristine, tmp_path)
    message = assert_refused([*RESUME, "--max-steps", "1000"], w, "max_steps was 3, now 1000",
                             capsys)
    assert "may change" in message
    assert_refused([*RESUME, "--lr", "0.5"], w, "lr was 0.001, now 0.5", capsys)


def test_resume_refuses_other_data_of_the_same_vocabulary(pristine, tmp_path, capsys):
    """Another data dir with the run's vocabulary was taken as it came: the run went on
    training on other text, exit 0."""
    from stagegpt.data.prepare import prepare_markov

    w = copy_world(pristine, tmp_path)
    prepare_markov(w / "other", order=2, vocab=16, tokens=4000, seed=4)
    other = [a if a != "{w}/data" else "{w}/other" for a in RESUME]
    line = assert_refused(other, w, r"cannot resume .*/run on other data: it trained on "
                          r"'.*/data' \(text sha256 [0-9a-f]{12}\.\.\.\)", capsys)
    assert line.endswith("pass the run's own --data, or train into a new --out")
    shutil.copytree(w / "data", w / "moved")  # the same text elsewhere still resumes
    assert main([a.replace("{w}/data", "{w}/moved").format(w=w) for a in RESUME]) == 0


def test_a_hugging_face_config_of_10_11_positions_is_refused(pristine, tmp_path, capsys):
    w = copy_world(pristine, tmp_path)
    edit_json(w / "hf" / "config.json", n_positions=10**11)
    assert_refused(["convert", "--from-hf", "{w}/hf", "--no-tokenizer", "--out", "{w}/back"], w,
                   "needs .* GB of memory", capsys)


def test_an_allocator_failure_is_one_line_naming_the_verb(pristine, tmp_path, capsys,
                                                          monkeypatch):
    """What no check foresaw still ends in one line: PyTorch's allocator failing mid-way."""
    w = copy_world(pristine, tmp_path)

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: "
                           "can't allocate memory: you tried to allocate 1099511627776 bytes.")

    monkeypatch.setattr("stagegpt.model.layers.KVCache.__init__", out_of_memory)
    line = assert_refused(SAMPLE, w, "out of memory", capsys)
    assert line.startswith("stagegpt sample: error: out of memory (") and "smaller" in line
