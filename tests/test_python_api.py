"""The Python API a user needs without reading the source: preparing data, saving
checkpoints and Hugging Face dirs, which refuse to replace anything unless told to."""

import pytest
import torch

from stagegpt import ModelConfig, StagegptError, build_model, load_checkpoint
from stagegpt.data import (
    load_split,
    load_tokenizer_from_data,
    prepare_corpus,
    prepare_markov,
    read_meta,
    text_corpus,
)
from stagegpt.interop.gpt2 import save_hf_dir
from stagegpt.train.checkpoints import save_checkpoint


def test_prepare_from_python_and_refuse_to_replace(tmp_path):
    (tmp_path / "a.txt").write_text("to be or not to be\n" * 200)
    out = tmp_path / "data"
    meta, stats = prepare_corpus(text_corpus([tmp_path / "a.txt"]), "char", out,
                                 progress=False)
    assert read_meta(out)["train_tokens"] == meta["train_tokens"] == len(load_split(out, "train"))
    assert load_tokenizer_from_data(out).decode(load_split(out, "val")[:5].tolist())
    before = (out / "meta.json").read_bytes()
    with pytest.raises(StagegptError, match="^overwrite is off"):
        prepare_markov(out, order=1, vocab=8, tokens=2000, seed=0)
    assert (out / "meta.json").read_bytes() == before
    prepare_markov(out, order=1, vocab=8, tokens=2000, seed=0, overwrite=True)
    assert read_meta(out)["source"] == "markov"


def test_saving_refuses_to_replace_unless_told(tmp_path):
    model = build_model(5, ModelConfig(vocab_size=16, block_size=8, n_embd=16, n_layer=1,
                                       n_head=2))
    for save in (lambda p, **kw: save_checkpoint(p, model, None, **kw),
                 lambda p, **kw: save_hf_dir(p, model, **kw)):
        target = tmp_path / "target"
        target.mkdir()
        (target / "keep.txt").write_text("mine")
        with pytest.raises(StagegptError, match="^overwrite is off"):
            save(target)
        assert (target / "keep.txt").read_text() == "mine"
        save(target, overwrite=True)
        assert not (target / "keep.txt").exists()
        loaded = load_checkpoint(target).model
        assert torch.equal(loaded.wte.weight, model.wte.weight)
        for path in target.iterdir():
            path.unlink()
        target.rmdir()


def test_the_notebooks_never_replace_a_folder_that_is_not_their_data(tmp_path):
    from stagegpt.tools.notebook import demo_data

    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "thesis.txt").write_text("mine")
    with pytest.raises(StagegptError, match="^overwrite is off"):
        demo_data(folder)
    assert (folder / "thesis.txt").read_text() == "mine"


@pytest.mark.parametrize("path", [None, "", 5])
@pytest.mark.parametrize("loader", ["load_checkpoint", "load_finetuned", "load_for_chat"])
def test_every_checkpoint_loader_names_its_path_parameter(path, loader):
    """Not the current directory for "", not a TypeError for None or 5."""
    from stagegpt.finetune import checkpoint

    load = load_checkpoint if loader == "load_checkpoint" else getattr(checkpoint, loader)
    with pytest.raises(StagegptError, match="^path must name a checkpoint") as err:
        load(path)
    assert err.value.param == "path"


def test_a_fine_tune_names_a_base_that_is_no_path(tmp_path):
    from stagegpt.finetune import FinetuneSettings, FinetuneTrainer
    from stagegpt.train.config import TrainConfig

    with pytest.raises(StagegptError, match="^base must name a checkpoint or run dir") as err:
        FinetuneTrainer(5, tmp_path / "data", tmp_path / "out", TrainConfig(),
                        FinetuneSettings("classify"))
    assert err.value.param == "base" and not (tmp_path / "out").exists()


def test_a_switch_that_guards_files_must_be_a_bool(tmp_path):
    """overwrite="no" is true in Python: it replaced what it was asked to keep."""
    from stagegpt import Trainer
    from stagegpt.train.config import TrainConfig

    out = tmp_path / "kept"
    out.mkdir()
    (out / "mine.txt").write_text("mine")
    for save in (lambda: prepare_markov(out, 1, 4, 1000, 0, overwrite="no"),
                 lambda: save_hf_dir(out, build_model(5, ModelConfig(vocab_size=50, n_embd=16)),
                                     overwrite="no")):
        with pytest.raises(StagegptError, match="^overwrite must be True or False, got 'no'"):
            save()
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    with pytest.raises(StagegptError, match="^resume must be True or False") as err:
        Trainer(1, ModelConfig(), TrainConfig(), tmp_path, out, resume="no")
    assert err.value.param == "resume"
