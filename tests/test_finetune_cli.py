"""The fine-tuning verbs from the command line: chat through a pipe, sample --chat, and
hostile input (bad flags, a missing base, data for another tokenizer or task)."""

import io
import subprocess
import sys

import pytest
from finetune_base import write_genre_dir, write_word_dir
from finetune_data import write_classify_dir
from hostile.world import read_tree

from stagegpt import TrainConfig
from stagegpt.cli import main
from stagegpt.data.tokenizers import get_tokenizer
from stagegpt.finetune import FinetuneSettings, finetune
from stagegpt.interop import load_checkpoint
from stagegpt.train.rundir import step_dirs

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = dict(batch_size=16, warmup_steps=2, eval_every=100, eval_batches=2, ckpt_every=100)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, pretrained_char5):
    root = tmp_path_factory.mktemp("ftcli")
    base = pretrained_char5
    tokenizer = load_checkpoint(base).tokenizer
    words = write_word_dir(root / "words", tokenizer)
    genre = write_genre_dir(root / "genre", tokenizer)
    finetune(base, words, root / "chat", FinetuneSettings("instruct"),
             TrainConfig(max_steps=30, lr=3e-3, **QUICK), progress=False)
    finetune(base, genre, root / "cls", FinetuneSettings("classify"),
             TrainConfig(max_steps=2, **QUICK), progress=False)
    return {"root": root, "base": base, "words": words, "genre": genre,
            "chat": root / "chat", "cls": root / "cls", "tokenizer": tokenizer}


def test_chat_reads_a_pipe_streams_replies_and_obeys_reset_and_quit(runs):
    lines = "a comedy word\n/reset\na history word\n/quit\na tragedy word\n"
    done = subprocess.run([sys.executable, "-m", "stagegpt", "chat", "--threads", "1",
                           "--ckpt", str(runs["chat"]), "--temperature", "0",
                           "--max-new-tokens", "12"],
                          input=lines, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-1000:]
    out = done.stdout.splitlines()
    replies = [line for line in out if line.startswith("bot> ")]
    assert len(replies) == 2 and "(conversation reset)" in out  # nothing after /quit
    assert all("USER" not in r and "\n" not in r for r in replies)


def test_chat_skips_a_line_that_is_not_utf8_or_too_long_and_goes_on(runs, monkeypatch, capsys):
    """Under a strict UTF-8 stdin (a UTF-8 locale) a byte like 0xff was a traceback; a
    line without end was read into memory whole."""
    import os

    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}  # strict, as in en_US.UTF-8
    done = subprocess.run([sys.executable, "-m", "stagegpt", "chat", "--threads", "1",
                           "--ckpt", str(runs["chat"]), "--temperature", "0",
                           "--max-new-tokens", "3"],
                          input=b"caf\xe9\na comedy word\n", capture_output=True, env=env,
                          timeout=120)
    assert done.returncode == 0 and done.stderr == b"", done.stderr[-1000:]
    out = done.stdout.decode().splitlines()
    assert out[0] == "(the message is not UTF-8 text; send it as UTF-8)"
    assert sum(line.startswith("bot> ") for line in out) == 1
    monkeypatch.setattr("stagegpt.cli.chat.MAX_MESSAGE_CHARS", 50)
    monkeypatch.setattr("sys.stdin", io.StringIO("a" * 120 + "\n" + "b" * 50 + "\n"))
    assert main(["chat", "--ckpt", str(runs["chat"]), "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "(the message is over 50 characters, far more than the model reads; " \
                     "send a shorter one)"
    assert sum(line.startswith("bot> ") for line in out) == 1  # the 50 b's, and no a's


def test_the_largest_seed_serves_every_reply_and_a_bad_system_message_is_refused(
        runs, capsys, monkeypatch):
    """Reply i uses seed S + i mod 2**64, so the last seed the check accepts still serves
    a second reply; --system is checked before the first message."""
    from stagegpt.generation import nth_seed

    assert nth_seed(2**64 - 1, 1) == 0 and nth_seed(None, 3) is None
    last = str(2**64 - 1)
    assert main(["sample", "--ckpt", str(runs["chat"]), "--chat", "--prompt", "a comedy word",
                 "--max-new-tokens", "3", "--num-samples", "2", "--seed", last]) == 0
    assert capsys.readouterr().out.count("---") == 1
    monkeypatch.setattr("sys.stdin", io.StringIO("a comedy word\na history word\n"))
    assert main(["chat", "--ckpt", str(runs["chat"]), "--max-new-tokens", "3",
                 "--seed", last]) == 0
    assert capsys.readouterr().out.count("bot> ") == 2
    for system, message in (("日本", "--system cannot be encoded"),
                            ("a" * 1000, "--system is 1000 tokens")):
        monkeypatch.setattr("sys.stdin", io.StringIO("a comedy word\n"))
        assert main(["chat", "--ckpt", str(runs["chat"]), "--system", system]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err


def test_sample_chat_applies_the_template_and_stops_at_the_end(runs, capsys):
    args = ["sample", "--ckpt", str(runs["chat"]), "--chat", "--prompt", "a comedy word",
            "--temperature", "0", "--max-new-tokens", "12"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.endswith("\n") and first.count("\n") == 1  # one reply, cut at the blank line


def finetune_args(runs, *extra, task="classify", data="genre"):
    return ["finetune", "--task", task, "--base", str(runs["base"]), "--data",
            str(runs[data]), "--out", str(runs["root"] / "bad"), "--max-steps", "1",
            "--no-progress", *extra]


@pytest.mark.parametrize("extra,task,data,message", [
    (["--train", "head"], "instruct", "words", "--train=head is for classify"),
    (["--lora-rank", "0"], "classify", "genre", "--lora-rank must be"),
    (["--lora-alpha", "4"], "classify", "genre", "need --lora-rank"),
    (["--lora-rank", "2", "--train", "all"], "classify", "genre",
     "--train=all does not go with LoRA"),
    (["--lora-rank", "2", "--lora-targets", "wte"], "classify", "genre", "unknown layer"),
    (["--lora-rank", "2", "--lora-targets", "c_gate"], "classify", "genre",
     "--lora-targets: this model has no 'c_gate' layer"),
    ([], "instruct", "genre", "--task=instruct, but"),
])
def test_bad_flags_are_one_line_errors(runs, capsys, extra, task, data, message):
    assert main(finetune_args(runs, *extra, task=task, data=data)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (runs["root"] / "bad").exists()


@pytest.fixture(scope="module")
def blockless_bases(runs):
    """Stages 1 and 2 (no transformer blocks, no attention) with the runs' tokenizer."""
    from dataclasses import replace

    from finetune_base import BASE_CONFIG

    from stagegpt import build_model
    from stagegpt.train.checkpoints import save_checkpoint

    tokenizer = runs["tokenizer"]
    config = replace(BASE_CONFIG, vocab_size=tokenizer.vocab_size)
    return {stage: save_checkpoint(runs["root"] / f"stage{stage}", build_model(stage, config),
                                   tokenizer) for stage in (1, 2)}


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("extra,message", [
    (["--train", "last-block"], "--train=last-block needs transformer blocks"),
    (["--lora-rank", "2"], "--lora-targets: this model has no 'c_attn' layer")])
def test_settings_the_base_cannot_take_are_refused_before_out_is_made(
        runs, blockless_bases, capsys, stage, extra, message):
    args = finetune_args(runs, *extra)
    args[args.index("--base") + 1] = str(blockless_bases[stage])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (runs["root"] / "bad").exists()


def test_missing_base_and_foreign_tokenizer_are_refused(runs, capsys, tmp_path):
    args = finetune_args(runs)
    args[args.index("--base") + 1] = str(tmp_path / "nowhere")
    assert main(args) == 2
    assert "nowhere" in capsys.readouterr().err
    other = get_tokenizer("char", ["abcdefghijklmnopqrstuvwxyz \n"])
    foreign = write_classify_dir(tmp_path / "foreign", [{"text": "a b", "label": "x"},
                                                        {"text": "b a", "label": "y"}], other)
    args = finetune_args(runs)
    args[args.index("--data") + 1] = str(foreign)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "prepared for" in err and "--tokenizer from:BASE" in err


def test_a_text_longer_than_the_context_names_truncate_as_python_and_as_a_flag(
        runs, capsys, tmp_path):
    from stagegpt.errors import StagegptError

    long = write_classify_dir(tmp_path / "long", [{"text": "king " * 200, "label": "x"},
                                                  {"text": "king", "label": "y"}],
                              runs["tokenizer"])
    with pytest.raises(StagegptError, match=r"train.jsonl:1: .* pass `truncate=True` to keep"):
        finetune(runs["base"], long, tmp_path / "py", FinetuneSettings("classify"),
                 TrainConfig(max_steps=1, **QUICK), progress=False)
    args = finetune_args(runs)
    args[args.index("--data") + 1] = str(long)
    assert main(args) == 2
    assert "; pass --truncate to keep the first block_size tokens" in capsys.readouterr().err
    assert main([*args, "--truncate"]) == 0


def test_verbs_refuse_the_other_task_and_an_existing_merge_target(runs, capsys, tmp_path):
    assert main(["classify", "--ckpt", str(runs["chat"]), "--text", "king"]) == 2
    assert "not a classifier" in capsys.readouterr().err
    assert main(["chat", "--ckpt", str(runs["cls"])]) == 2
    assert "is a classifier" in capsys.readouterr().err
    assert main(["classify", "--ckpt", str(runs["base"]), "--text", "king"]) == 2
    assert "not a fine-tuned checkpoint" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("mine")
    assert main(["merge", "--ckpt", str(runs["cls"]), "--out", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err
    assert "error: --overwrite is off" in err and "overwrite=True" not in err
    assert (tmp_path / "taken" / "x").read_text() == "mine"


def merge(source, out, *extra):
    return main(["merge", "--ckpt", str(source), "--out", str(out), *extra])


def test_merge_never_writes_over_into_or_around_what_it_reads(runs, capsys):
    """Not the run (its checkpoints, optimizer states, metrics), nor a checkpoint of it,
    nor the base a head-only run reads, even with --overwrite."""
    run, base = runs["cls"], runs["base"]
    step, base_step = step_dirs(run)[-1], step_dirs(base)[-1]
    before = read_tree(run), read_tree(base)
    for source, out, relation in [(run, run, "is"), (step, run, "is"), (run, step, "is"),
                                  (run / "best", run / "best", "is"),
                                  (run, run / "merged", "lies inside"), (run, base_step, "is"),
                                  (run, base, "is"), (run, run.parent, "holds")]:
        capsys.readouterr()
        assert merge(source, out, "--overwrite") == 2
        err = capsys.readouterr().err
        assert f"error: --out {out} {relation} " in err and "which the merge reads" in err, err
        assert err.count("\n") == 1
    assert (read_tree(run), read_tree(base)) == before


def test_merge_overwrite_replaces_a_checkpoint_and_nothing_else(runs, capsys, tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("mine too")
    for out in (notes, tmp_path / "file"):
        capsys.readouterr()
        assert merge(runs["cls"], out, "--overwrite") == 2
        err = capsys.readouterr().err
        assert f"error: --out {out} is not a stagegpt checkpoint" in err and err.count("\n") == 1
    assert (notes / "notes.txt").read_text() == "mine"
    assert (tmp_path / "file").read_text() == "mine too"
    assert merge(runs["cls"], tmp_path / "merged") == 0
    assert (tmp_path / "merged" / "head.safetensors").is_file()
    assert merge(runs["chat"], tmp_path / "merged", "--overwrite") == 0
    assert not (tmp_path / "merged" / "head.safetensors").exists()  # the chat model's now
    from stagegpt.errors import StagegptError
    from stagegpt.finetune import write_merged

    before = read_tree(tmp_path / "merged")
    with pytest.raises(StagegptError, match="^overwrite must be True or False, got 'no'"):
        write_merged(runs["cls"], tmp_path / "merged", overwrite="no")  # "no" replaced it
    assert read_tree(tmp_path / "merged") == before


def test_resume_on_another_base_exits_2_naming_the_flags(runs, capsys, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    other = tmp_path / "other"
    shutil.copytree(step_dirs(runs["base"])[-1], other)
    weights = load_file(other / "model.safetensors")
    weights["wte.weight"] = weights["wte.weight"] + 1
    save_file(weights, other / "model.safetensors")
    args = finetune_args(runs, "--resume")
    args[args.index("--base") + 1] = str(other)
    args[args.index("--out") + 1] = str(runs["cls"])
    before = read_tree(runs["cls"])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"it fine-tunes the base {step_dirs(runs['base'])[-1]}" in err
    assert err.rstrip().endswith("pass the original --base or choose a new --out")
    assert read_tree(runs["cls"]) == before


def test_a_fine_tune_that_keeps_only_its_changes_points_to_merge(runs, capsys, tmp_path):
    """sample and convert need a whole model: a head-only (or LoRA) fine-tune is refused
    with the merge command to run; the merged classifier exports its language model, and
    says its head was left out."""
    for argv in (["sample", "--ckpt", str(runs["cls"]), "--max-new-tokens", "2"],
                 ["convert", "--to-hf", "--ckpt", str(runs["cls"]), "--out",
                  str(tmp_path / "hf")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "keeps only what it changed" in err
        assert f"`stagegpt merge --ckpt {runs['cls']}" in err  # the run's checkpoint in it
    assert not (tmp_path / "hf").exists()
    assert main(["merge", "--ckpt", str(runs["cls"]), "--out", str(tmp_path / "merged")]) == 0
    capsys.readouterr()
    assert main(["convert", "--to-hf", "--ckpt", str(tmp_path / "merged"), "--out",
                 str(tmp_path / "hf")]) == 0
    out = capsys.readouterr().out
    assert "classification head (head.safetensors)" in out and "wrote Hugging Face GPT-2" in out
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def test_classify_reads_a_bounded_prefix_of_text_file(runs, capsys, monkeypatch, tmp_path):
    """--text-file /dev/zero (or any endless stream) is refused after the limit, not read
    until memory runs out; a short file is classified as --text would be."""
    monkeypatch.setattr("stagegpt.fileio.MAX_TEXT_BYTES", 1 << 10)
    assert main(["classify", "--ckpt", str(runs["cls"]), "--text-file", "/dev/zero"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--text-file /dev/zero is over 1,024 bytes" in err
    (tmp_path / "t.txt").write_text("a comedy word")
    assert main(["classify", "--ckpt", str(runs["cls"]), "--text-file",
                 str(tmp_path / "t.txt")]) == 0
    from_file = capsys.readouterr().out
    assert main(["classify", "--ckpt", str(runs["cls"]), "--text", "a comedy word"]) == 0
    assert capsys.readouterr().out == from_file
