"""Fine-tuning: the loss mask, the classifier's last real token, exact resume of a LoRA
run, merged == adapted, and full and LoRA fine-tunes beating the majority baseline."""

import os
import signal

import pytest
import torch
from finetune_base import write_genre_dir, write_word_dir
from finetune_data import chat_record
from hostile.world import read_tree
from safetensors.torch import load_file

from stagegpt import TrainConfig
from stagegpt.data.tokenizers import get_tokenizer
from stagegpt.finetune import FinetuneSettings, LoRAConfig, finetune, load_finetuned
from stagegpt.finetune.classify import Classifier, pad_batch
from stagegpt.finetune.templates import (
    IGNORE,
    ReplyEnd,
    encode_dialog,
    encode_prompt,
    loss_targets,
    template_for,
)
from stagegpt.interop import load_checkpoint
from stagegpt.train.rundir import step_dirs

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = dict(batch_size=16, warmup_steps=2, eval_every=100, eval_batches=2, ckpt_every=100)


@pytest.fixture(scope="module")
def base(pretrained_char5):
    return pretrained_char5


@pytest.fixture(scope="module")
def tokenizer(base):
    return load_checkpoint(base).tokenizer


@pytest.fixture(scope="module")
def genre(base, tokenizer, tmp_path_factory):
    return write_genre_dir(tmp_path_factory.mktemp("genre") / "data", tokenizer)


# ---- templates and the loss mask ----------------------------------------------------

DIALOG = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
          {"role": "assistant", "content": "hello there"},
          {"role": "user", "content": "and so"}, {"role": "assistant", "content": "bye"}]


@pytest.fixture(scope="module")
def bpe():
    return get_tokenizer("bpe:300", ["hello there, be brief and bye. " * 40])


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_loss_mask_covers_exactly_the_reply_tokens(kind, tokenizer, bpe):
    tok = tokenizer if kind == "char" else bpe
    template = template_for(tok)
    ids, is_reply = encode_dialog(tok, template, DIALOG)
    x, y = loss_targets(ids, is_reply)
    trained = [i + 1 for i, t in enumerate(y) if t != IGNORE]  # positions in ids
    assert trained == [i for i, r in enumerate(is_reply) if r]
    assert [y[i - 1] for i in trained] == [ids[i] for i in trained]
    replies = [tok.decode([ids[i] for i in trained if i <= len(ids) - 1])]
    end = template.end_text if template.end_id is None else tok.decode([template.end_id])
    assert replies == [f"hello there{end}bye{end}"]
    prompt = encode_prompt(tok, template, DIALOG[:2])
    assert ids[:len(prompt)] == prompt and not any(is_reply[:len(prompt)])


def test_char_template_uses_only_the_vocabulary_and_gpt2_like_vocabs_end_specially(
        tokenizer, bpe):
    assert template_for(tokenizer).end_text == "\n\n"
    assert template_for(bpe).end_id == bpe.eot_id
    with pytest.raises(Exception, match="lacks"):
        template_for(get_tokenizer("char", ["abc\n"]))


def test_reply_end_holds_back_a_text_marker_split_across_pieces(tokenizer):
    end = ReplyEnd(template_for(tokenizer))
    shown = "".join(end.push(p) for p in ["kin", "g\n", "\nmore"])
    assert shown == "king" and end.done


# ---- the classifier -------------------------------------------------------------------

def test_classifier_reads_the_last_real_token(base):
    torch.manual_seed(0)
    model = Classifier(load_checkpoint(base).model, 3).eval()
    texts = [[5, 6, 7], [8, 9, 10, 11, 12], [3]]
    with torch.no_grad():
        ids, lengths = pad_batch(texts, 0)
        padded = model(ids, lengths)
        other_pad = model(*pad_batch(texts, 7))
        alone = torch.cat([model(torch.tensor([t]), torch.tensor([len(t)])) for t in texts])
        direct = model.head(model.lm.body(torch.tensor([texts[1]]))[:, -1])
    assert torch.allclose(padded, alone, atol=1e-6)
    assert torch.allclose(padded, other_pad, atol=1e-6)
    assert torch.allclose(padded[1], direct[0], atol=1e-6)


# ---- whole runs -----------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["all", "lora"])
def test_full_and_lora_fine_tunes_beat_the_majority_baseline(mode, base, genre, tmp_path):
    lora = LoRAConfig(4, 8.0) if mode == "lora" else None
    settings = FinetuneSettings("classify", "all" if mode == "all" else None, lora)
    lr = 1e-2 if mode == "lora" else 3e-3
    results = finetune(base, genre, tmp_path / "run", settings,
                       TrainConfig(max_steps=30, lr=lr, min_lr=lr / 10, **QUICK), progress=False)
    assert results["majority_baseline"] == pytest.approx(0.5, abs=0.15)
    assert results["test_accuracy"] > results["majority_baseline"] + 0.2
    assert sum(map(sum, (r.values() for r in results["test_confusion"].values()))) == 90
    if mode == "lora":
        assert results["trainable_params"] == 4 * 1024 + 32 * 3 + 3  # adapters + head
        assert not (tmp_path / "run" / "best" / "model.safetensors").exists()


def test_lora_run_resumes_bit_exactly(base, genre, tmp_path):
    settings = FinetuneSettings("classify", lora=LoRAConfig(2, 4.0, ("c_attn",)))
    config = TrainConfig(max_steps=6, lr=3e-3, **{**QUICK, "eval_every": 2})
    finetune(base, genre, tmp_path / "full", settings, config, progress=False)

    def interrupt_at_3(trainer, row):
        if row["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)

    first = finetune(base, genre, tmp_path / "split", settings, config, progress=False,
                     on_step=interrupt_at_3)
    assert first["interrupted"] and first["steps"] == 3
    finetune(base, genre, tmp_path / "split", settings, config, resume=True, progress=False)
    for name in ("adapters.safetensors", "head.safetensors"):
        a = load_file(step_dirs(tmp_path / "full")[-1] / name)
        b = load_file(step_dirs(tmp_path / "split")[-1] / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_merged_checkpoint_is_plain_and_gives_the_adapted_logits(base, genre, tmp_path):
    from stagegpt.cli import main

    settings = FinetuneSettings("classify", lora=LoRAConfig(4, 8.0))
    finetune(base, genre, tmp_path / "run", settings,
             TrainConfig(max_steps=5, lr=1e-2, **QUICK), progress=False)
    assert main(["merge", "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "m")]) == 0
    adapted = load_finetuned(tmp_path / "run", merge=False)
    merged = load_checkpoint(tmp_path / "m")  # what sample, convert and inspect read
    x = torch.randint(0, merged.config.vocab_size, (2, 20))
    with torch.no_grad():
        diff = (adapted.lm(x)[0] - merged.model(x)[0]).abs().max()
        changed = (adapted.lm(x)[0] - load_checkpoint(base).model(x)[0]).abs().max()
    assert diff < 1e-5 and changed > 1e-4
    assert set(load_file(tmp_path / "m" / "model.safetensors")) == set(
        load_file(step_dirs(base)[-1] / "model.safetensors"))


@pytest.mark.parametrize("task", ["classify", "instruct"])
def test_a_merged_lora_run_loads_where_its_run_does(base, genre, tokenizer, tmp_path, task):
    """The merged copy of a LoRA run has no lora.json (nothing is left to attach), and
    classify, chat and sample --chat read it: they refused it as incomplete."""
    from stagegpt.cli import main
    from stagegpt.finetune.checkpoint import load_for_chat

    data = genre if task == "classify" else write_word_dir(tmp_path / "words", tokenizer)
    finetune(base, data, tmp_path / "run", FinetuneSettings(task, lora=LoRAConfig(4, 8.0)),
             TrainConfig(max_steps=3, lr=1e-2, **QUICK), progress=False)
    assert main(["merge", "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "m")]) == 0
    merged, run = load_finetuned(tmp_path / "m"), load_finetuned(tmp_path / "run")
    assert merged.lora is None and merged.info["train"] == "lora"
    x = torch.randint(0, run.lm.config.vocab_size, (2, 20))
    with torch.no_grad():
        assert torch.allclose(merged.lm(x)[0], run.lm(x)[0], atol=1e-5)
        if task == "classify":
            lengths = torch.tensor([20, 7])
            assert torch.allclose(merged.classifier(x, lengths), run.classifier(x, lengths),
                                  atol=1e-5)
        else:
            assert load_for_chat(tmp_path / "m")[0].config == run.lm.config


def test_classify_cli_prints_label_and_probabilities(base, genre, tmp_path, capsys):
    from stagegpt.cli import main

    finetune(base, genre, tmp_path / "run", FinetuneSettings("classify"),
             TrainConfig(max_steps=3, **QUICK), progress=False)
    assert main(["classify", "--ckpt", str(tmp_path / "run"), "--text", "king war"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] in ("comedy", "history", "tragedy") and len(lines) == 4
    assert sum(float(line.split()[-1]) for line in lines[1:]) == pytest.approx(1.0, abs=0.01)


def test_instruct_run_reports_reply_loss_and_exact_match(base, tokenizer, tmp_path):
    data = write_word_dir(tmp_path / "words", tokenizer)
    results = finetune(base, data, tmp_path / "run", FinetuneSettings("instruct"),
                       TrainConfig(max_steps=30, lr=3e-3, **QUICK), progress=False)
    assert results["val_loss"] < results["base_val_loss"]
    assert results["test_exact_match_records"] == 12
    assert 0.0 <= results["test_exact_match_before"] <= 1.0
    assert (tmp_path / "run" / "results.json").is_file()


def test_record_longer_than_the_context_is_refused(base, tokenizer, tmp_path):
    from stagegpt.errors import StagegptError

    long = chat_record("tell " * 30, "king")
    from finetune_data import write_instruct_dir

    data = write_instruct_dir(tmp_path / "long", [long], tokenizer)
    with pytest.raises(StagegptError, match=r"train.jsonl:1: .*more than the base's context"):
        finetune(base, data, tmp_path / "run", FinetuneSettings("instruct"),
                 TrainConfig(max_steps=1, **QUICK), progress=False)


def test_an_answer_the_tokenizer_cannot_encode_is_refused_before_training(
        base, tokenizer, tmp_path):
    """Exact match encodes each "answer" after training: an answer with a character the
    base's vocabulary lacks failed then, with no file named and no results.json."""
    from finetune_data import write_instruct_dir

    from stagegpt.errors import StagegptError

    val = [chat_record("a king word", "king", kind="speaker", answer="king"),
           chat_record("a king word", "king", kind="speaker", answer="KING!")]
    data = write_instruct_dir(tmp_path / "d", {"train": val[:1], "val": val}, tokenizer)
    with pytest.raises(StagegptError, match=r"val.jsonl:2: character 'K'"):
        finetune(base, data, tmp_path / "run", FinetuneSettings("instruct"),
                 TrainConfig(max_steps=1, **QUICK), progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("out,where", [(".", "holds the base checkpoint"),
                                       ("best", "is the base checkpoint"),
                                       ("best/run", "is inside the base checkpoint")])
def test_a_run_dir_over_or_in_its_base_is_refused(base, genre, tmp_path, out, where):
    """A base copied to DIR/best and fine-tuned into DIR: the run's best/ replaced it, and
    the base's weights were gone."""
    import shutil

    from stagegpt.errors import StagegptError

    shutil.copytree(step_dirs(base)[-1], tmp_path / "best")
    before = read_tree(tmp_path)
    with pytest.raises(StagegptError, match=f"^out_dir .* {where}") as refused:
        finetune(tmp_path / "best", genre, tmp_path / out, FinetuneSettings("classify"),
                 TrainConfig(max_steps=1, **QUICK), progress=False)
    assert refused.value.param == "out_dir" and read_tree(tmp_path) == before


def test_adapters_refuse_a_base_whose_weights_changed(base, genre, tmp_path):
    import shutil

    from safetensors.torch import save_file

    from stagegpt.errors import StagegptError

    own_base = tmp_path / "base"
    shutil.copytree(step_dirs(base)[-1], own_base)
    finetune(own_base, genre, tmp_path / "run", FinetuneSettings("classify"),
             TrainConfig(max_steps=1, **QUICK), progress=False)
    assert load_finetuned(tmp_path / "run").head is not None
    weights = load_file(own_base / "model.safetensors")
    weights["ln_f.weight"] = weights["ln_f.weight"] * 2
    save_file(weights, own_base / "model.safetensors")
    with pytest.raises(StagegptError, match="changed since"):
        load_finetuned(tmp_path / "run")


def edit_json(path, key, value):
    import json

    data = json.loads(path.read_text())
    (data["finetune"] if key == "labels" else data)[key] = value
    path.write_text(json.dumps(data))


def set_labels(directory, labels):
    edit_json(directory / "config.json", "labels", labels)


def to_float64(path):
    from safetensors.torch import save_file

    save_file({k: v.double() for k, v in load_file(path).items()}, path)


BAD_LABELS = '"labels" must be a list of 2 to 1000 distinct'


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "lora.json").write_text('{"rank": "8", "alpha": 16, "targets": []}'),
     "lora.json is damaged"),
    (lambda d: (d / "adapters.safetensors").write_bytes(b"\0" * 10), "not a readable"),
    (lambda d: (d / "head.safetensors").unlink(), "head.safetensors is missing"),
    (lambda d: (d / "lora.json").unlink(), "is incomplete: lora.json, the settings of its LoRA"),
    (lambda d: edit_json(d / "lora.json", "targets", ["c_gate"]),
     "lora.json: its targets name 'c_gate', a layer this model does not have"),
    (lambda d: to_float64(d / "adapters.safetensors"), "holds float64 values, the adapters "
     "need float32"),
    (lambda d: set_labels(d, [[1], [2]]), BAD_LABELS),
    (lambda d: set_labels(d, [f"label {i}" for i in range(1001)]), BAD_LABELS),
    (lambda d: set_labels(d, ["comedy", "history"]), "head.safetensors scores 3 labels, but "
     "config.json names 2"),
])
def test_a_damaged_lora_checkpoint_is_one_line_error(base, genre, tmp_path, capsys, damage,
                                                     message):
    from stagegpt.cli import main

    finetune(base, genre, tmp_path / "run", FinetuneSettings("classify", lora=LoRAConfig(2, 4.0)),
             TrainConfig(max_steps=1, **QUICK), progress=False)
    damage(step_dirs(tmp_path / "run")[-1])
    capsys.readouterr()
    assert main(["classify", "--ckpt", str(tmp_path / "run"), "--text", "king"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert "--lora" not in err  # what a file holds is named by the file, not a flag


def test_merge_refuses_a_classifier_whose_labels_are_damaged(base, genre, tmp_path, capsys):
    from stagegpt.cli import main

    finetune(base, genre, tmp_path / "run", FinetuneSettings("classify"),
             TrainConfig(max_steps=1, **QUICK), progress=False)
    set_labels(step_dirs(tmp_path / "run")[-1], [None, None])
    capsys.readouterr()
    assert main(["merge", "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert BAD_LABELS in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


def test_a_reply_stops_at_the_special_end_token(bpe):
    from stagegpt import ModelConfig, build_model
    from stagegpt.finetune.reply import reply

    model = build_model(1, ModelConfig(vocab_size=bpe.vocab_size, block_size=32, n_embd=8,
                                       n_layer=1, n_head=1)).eval()
    template = template_for(bpe)
    prompt = encode_prompt(bpe, template, [{"role": "user", "content": "hello"}])
    word = bpe.encode("hello")[0]
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.bias.zero_()
        model.lm_head.bias[word] = 10.0  # always "hello": runs to max_new_tokens
    assert reply(model, bpe, template, prompt, 3) == bpe.decode([word] * 3)
    with torch.no_grad():
        model.lm_head.bias[template.end_id] = 20.0  # now the end comes first
    assert reply(model, bpe, template, prompt, 3) == ""


# ---- resuming: the same settings and the same base, checked before anything is written ----

ONE_STEP = TrainConfig(max_steps=1, **QUICK)
RESUMABLE = {"head": FinetuneSettings("classify"),
             "lora": FinetuneSettings("classify", lora=LoRAConfig(2, 4.0)),
             "last-block": FinetuneSettings("classify", "last-block")}


@pytest.fixture(scope="module")
def finished(base, genre, tmp_path_factory):
    """A one-step run per kind of checkpoint (head only, LoRA, whole model), and another
    base of the same shape (the first with ln_f doubled)."""
    import shutil

    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("finished")
    other = root / "other-base"
    shutil.copytree(step_dirs(base)[-1], other)
    weights = load_file(other / "model.safetensors")
    weights["ln_f.weight"] = weights["ln_f.weight"] * 2
    save_file(weights, other / "model.safetensors")
    for name, settings in RESUMABLE.items():
        finetune(base, genre, root / name, settings, ONE_STEP, progress=False)
    return {"root": root, "other": other}


@pytest.mark.parametrize("name", list(RESUMABLE))
def test_resuming_on_another_base_is_refused_before_anything_is_written(
        base, genre, finished, name):
    from stagegpt.errors import StagegptError

    run = finished["root"] / name
    before = read_tree(run)
    with pytest.raises(StagegptError, match="pass the original `base` or choose a new `out_dir`"):
        finetune(finished["other"], genre, run, RESUMABLE[name], ONE_STEP, resume=True,
                 progress=False)
    assert read_tree(run) == before
    assert finetune(base, genre, run, RESUMABLE[name], ONE_STEP, resume=True,
                    progress=False)["steps"] == 1


def test_resuming_on_other_records_is_refused_before_anything_is_written(
        base, genre, tokenizer, finished, tmp_path):
    """The records are fingerprinted like pretraining text: a resume on another data dir
    (same task and labels) went on silently and rewrote results.json with its scores."""
    import shutil

    from stagegpt.errors import StagegptError

    run = finished["root"] / "head"
    before = read_tree(run)
    other = write_genre_dir(tmp_path / "other", tokenizer, n_train=60, n_eval=20)
    with pytest.raises(StagegptError, match="cannot resume .* on other data") as refused:
        finetune(base, other, run, RESUMABLE["head"], ONE_STEP, resume=True, progress=False)
    assert refused.value.mentions == ("data_dir", "out_dir")
    assert read_tree(run) == before
    again = shutil.copytree(genre, tmp_path / "again")  # the same records elsewhere
    assert finetune(base, again, run, RESUMABLE["head"], ONE_STEP, resume=True,
                    progress=False)["steps"] == 1


@pytest.mark.parametrize("name,settings,changed", [
    ("head", FinetuneSettings("classify", "all"), "train 'head' in the run, 'all' now"),
    ("head", FinetuneSettings("classify", lora=LoRAConfig(2, 4.0)), "train 'head'"),
    ("lora", FinetuneSettings("classify", lora=LoRAConfig(4, 4.0)),
     "LoRA rank 2, alpha 4, targets c_attn,c_proj,c_fc in the run, rank 4, alpha 4, targets "
     "c_attn,c_proj,c_fc now"),
    ("lora", FinetuneSettings("classify", lora=LoRAConfig(2, 4.0, ("c_attn",))),
     "targets c_attn now"),
    ("lora", FinetuneSettings("classify"), "train 'lora' in the run, 'head' now"),
    ("last-block", FinetuneSettings("classify", "last-block", truncate=True), "truncate"),
])
def test_resuming_with_other_fine_tuning_settings_is_refused_in_one_line(
        genre, base, finished, name, settings, changed):
    from stagegpt.errors import StagegptError

    run = finished["root"] / name
    before = read_tree(run)
    with pytest.raises(StagegptError) as refused:
        finetune(base, genre, run, settings, ONE_STEP, resume=True, progress=False)
    message = str(refused.value)
    assert message.startswith(f"cannot resume {run}: its fine-tuning settings differ")
    assert changed in message and message.endswith("or choose a new `out_dir`")
    assert "optimizer" not in message and "delete" not in message and "\n" not in message
    assert read_tree(run) == before


# ---- the Python API names its parameters -------------------------------------------------

@pytest.mark.parametrize("make,param,start", [
    (lambda: FinetuneSettings("classify", "all", LoRAConfig(2)), "train",
     "train=all does not go with LoRA"),
    (lambda: FinetuneSettings("classify", lora={"rank": 2}), "lora",
     "lora must be a LoRAConfig or None, got dict"),
    (lambda: FinetuneSettings("classify", truncate="yes"), "truncate",
     "truncate must be True or False"),
    (lambda: FinetuneSettings("instruct", truncate=True), "truncate",
     "truncate is for classify texts"),  # was accepted and ignored
])
def test_bad_settings_name_the_python_parameter(make, param, start):
    from stagegpt.errors import StagegptError

    with pytest.raises(StagegptError) as refused:
        make()
    assert str(refused.value).startswith(start) and refused.value.param == param
    assert "--" not in str(refused.value)


@pytest.mark.parametrize("settings,config,param,start", [
    (None, ONE_STEP, "settings", "settings must be a FinetuneSettings"),
    (FinetuneSettings("classify"), {"max_steps": 1}, "train_config",
     "train_config must be a TrainConfig, got dict"),
    (FinetuneSettings("instruct"), ONE_STEP, "task", "task=instruct, but "),
])
def test_finetune_refuses_wrong_types_in_one_line_and_writes_nothing(
        base, genre, tmp_path, settings, config, param, start):
    from stagegpt.errors import StagegptError

    with pytest.raises(StagegptError) as refused:
        finetune(base, genre, tmp_path / "run", settings, config, progress=False)
    assert str(refused.value).startswith(start) and refused.value.param == param
    assert "--" not in str(refused.value)
    assert not (tmp_path / "run").exists()
