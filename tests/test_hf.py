"""GPT-2 interop: Hugging Face GPT-2 dirs load into stage 5, and stage 5 exports back.

transformers is the independent implementation: randomly initialized GPT2LMHeadModels
(nothing is downloaded; HF_HUB_OFFLINE=1) are compared with stagegpt on logits, then on
greedy tokens, and every file the converter writes or refuses is checked.
"""

import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from stagegpt import ModelConfig, build_model
from stagegpt.cli import main
from stagegpt.errors import StagegptError
from stagegpt.fast import accelerate
from stagegpt.generation.decoding import generate
from stagegpt.interop import load_checkpoint
from stagegpt.interop.gpt2 import config_from_hf, hf_config, load_hf_model, weights_to_hf
from stagegpt.train.checkpoints import save_checkpoint
from stagegpt.train.optim import param_groups

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

TINY = dict(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=2)


def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every parameter off its init (LayerNorms start at 1 and 0, biases at 0), so a
    mapping that drops or swaps a bias or a LayerNorm cannot pass by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # a tied tensor appears once
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def hf_model(seed: int = 0, **config) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(**{"bos_token_id": None, "eos_token_id": None, **config})
    return perturb(transformers.GPT2LMHeadModel(cfg), seed).eval()


def random_ids(vocab: int, B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def hf_logits(model, idx):
    with torch.no_grad():
        return model(idx).logits  # (B, T, V)


def our_logits(model, idx):
    with torch.no_grad():
        return model(idx)[0]  # (B, T, V)


def read_safetensors(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def refused(path, match: str) -> str:
    """Loading `path` raises a one-line StagegptError matching `match`; returns it."""
    with pytest.raises(StagegptError, match=match) as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)
    return str(err.value)


def edit_json(path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tests run many tiny ops (greedy decoding is one token at a time); on a busy
    shared CPU, waiting for a second OpenMP thread costs more than it saves (measured on
    2 loaded cores: 50 cached GPT-2-124M tokens took 15.6 s on 2 threads, 4.0 s on 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    """A tiny random GPT2LMHeadModel saved with save_pretrained, and its dir."""
    model = hf_model(**TINY)
    directory = tmp_path_factory.mktemp("hf") / "tiny"
    model.save_pretrained(directory)
    return model, directory


@pytest.fixture
def hf_dir(tiny_hf, tmp_path):
    """A private copy of the tiny HF dir that a test may break."""
    return shutil.copytree(tiny_hf[1], tmp_path / "hf")


@pytest.fixture
def our_dir(tiny_config, tmp_path):
    torch.manual_seed(0)
    model = perturb(build_model(5, tiny_config))
    return save_checkpoint(tmp_path / "ours", model, None)


# --- Hugging Face -> stagegpt ---------------------------------------------------------------


def test_hf_dir_loads_as_stage5_checkpoint(tiny_hf):
    ckpt = load_checkpoint(tiny_hf[1])
    assert ckpt.stage == 5 and ckpt.trainer_state is None and ckpt.tokenizer is None
    assert ckpt.config == ModelConfig(vocab_size=97, block_size=64, n_embd=32, n_layer=2,
                                      n_head=2, dropout=0.1, bias=True)
    assert not ckpt.model.training
    assert ckpt.model.lm_head.weight.data_ptr() == ckpt.model.wte.weight.data_ptr()


@pytest.mark.parametrize("kwargs, words", [
    (dict(device="nonsense"), "^device must be cpu, cuda or mps"),
    (dict(device=5), "^device must be cpu, cuda or mps"),
    (dict(device="meta"), "^device must be cpu, cuda or mps"),
    (dict(dtype=["float32"]), "^dtype must be one of"),
])
def test_load_checkpoint_names_a_bad_device_or_dtype(kwargs, words, tiny_hf):
    """A bad device reached torch (a RuntimeError, or an AssertionError for a missing GPU)
    after the checkpoint was read; an unhashable dtype raised TypeError."""
    with pytest.raises(StagegptError, match=words) as err:
        load_checkpoint(tiny_hf[1], **kwargs)
    assert err.value.param == next(iter(kwargs))
    assert next(load_checkpoint(tiny_hf[1], device=torch.device("cpu")).model.parameters()
                ).device.type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_load_checkpoint_on_a_missing_gpu_says_so(tiny_hf):
    with pytest.raises(StagegptError, match="no CUDA GPU is visible"):
        load_checkpoint(tiny_hf[1], device="cuda")


def test_tiny_hf_logits_match(tiny_hf):
    model, directory = tiny_hf
    ours = load_checkpoint(directory).model
    for seed, (B, T) in enumerate([(3, 64), (2, 17)]):
        idx = random_ids(97, B, T, seed)
        torch.testing.assert_close(our_logits(ours, idx), hf_logits(model, idx),
                                   atol=1e-4, rtol=0)


def test_tiny_hf_same_50_greedy_tokens(tiny_hf):
    model, directory = tiny_hf
    ours = load_checkpoint(directory).model
    idx = random_ids(97, 2, 8, seed=3)
    expected = model.generate(idx, max_new_tokens=50, do_sample=False)  # (2, 58)
    assert torch.equal(generate(ours, idx, 50, temperature=0), expected)
    assert torch.equal(generate(ours, idx, 50, temperature=0, use_cache=False), expected)


def test_gpt2_124m_shape_logits_and_greedy_match(tmp_path):
    model = hf_model(seed=1)  # GPT2Config() is GPT-2 small: 12 x 12 heads x 768, 1024, 50257
    model.save_pretrained(tmp_path / "gpt2")
    ckpt = load_checkpoint(tmp_path / "gpt2")
    assert ckpt.config == ModelConfig.from_preset("gpt2", dropout=0.1)
    assert ckpt.model.num_params() == 124_439_808
    idx = random_ids(50257, 1, 32, seed=1)
    torch.testing.assert_close(our_logits(ckpt.model, idx), hf_logits(model, idx),
                               atol=1e-4, rtol=0)
    prompt = idx[:, :8]
    expected = model.generate(prompt, max_new_tokens=50, do_sample=False)  # (1, 58)
    assert torch.equal(generate(ckpt.model, prompt, 50, temperature=0), expected)


@pytest.mark.parametrize("preset", ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"])
def test_every_gpt2_size_maps_to_its_preset_and_back(preset):
    config = ModelConfig.from_preset(preset, dropout=0.1)
    written = hf_config(config)
    theirs = transformers.GPT2Config(**written)  # transformers accepts what we write
    assert (theirs.n_embd, theirs.n_layer, theirs.n_head, theirs.n_positions) == (
        config.n_embd, config.n_layer, config.n_head, config.block_size)
    assert config_from_hf(theirs.to_dict(), Path("config.json")) == config


@pytest.mark.parametrize("mask", [torch.float32, torch.uint8, torch.bool])
@pytest.mark.parametrize("file", ["pytorch_model.bin", "model.safetensors"])
def test_old_checkpoint_without_prefix_loads(mask, file, tiny_hf, tmp_path):
    """The layout of OpenAI's original pytorch_model.bin: no `transformer.` prefix, the
    attention mask buffers stored, and the tied head saved as well. transformers 4.x
    stored the mask as uint8, later bool, in .bin and safetensors alike; such files were
    refused as holding a uint8 'weight'."""
    model, directory = tiny_hf
    weights = {k.removeprefix("transformer."): v for k, v in model.state_dict().items()}
    for i in range(TINY["n_layer"]):
        weights[f"h.{i}.attn.bias"] = torch.ones(64, 64, dtype=mask).tril().view(1, 1, 64, 64)
        weights[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    (tmp_path / "old").mkdir()
    shutil.copy(directory / "config.json", tmp_path / "old")
    if file == "model.safetensors":
        weights["lm_head.weight"] = weights["lm_head.weight"].clone()  # no shared storage
        save_file(weights, tmp_path / "old" / file)
    else:
        torch.save(weights, tmp_path / "old" / file)
    idx = random_ids(97, 2, 64)
    torch.testing.assert_close(our_logits(load_checkpoint(tmp_path / "old").model, idx),
                               hf_logits(model, idx), atol=1e-4, rtol=0)


def test_sharded_safetensors_load(tiny_hf, tmp_path):
    model, _ = tiny_hf
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    idx = random_ids(97, 2, 64)
    torch.testing.assert_close(our_logits(load_checkpoint(tmp_path / "sharded").model, idx),
                               hf_logits(model, idx), atol=1e-4, rtol=0)


def test_head_stored_beside_its_embedding_loads_but_untied_head_is_refused(hf_dir):
    weights = read_safetensors(hf_dir / "model.safetensors")
    weights["lm_head.weight"] = weights["transformer.wte.weight"].clone()
    save_file(weights, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
    load_checkpoint(hf_dir)
    weights["lm_head.weight"] += 0.01
    save_file(weights, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
    refused(hf_dir, "untied")


# --- stagegpt -> Hugging Face ---------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_exported_stage5_loads_in_transformers_with_same_logits(bias, tmp_path, capsys):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=97, block_size=16, n_embd=32, n_layer=2, n_head=2, bias=bias)
    model = perturb(build_model(5, config)).eval()
    save_checkpoint(tmp_path / "ours", model, None)
    assert main(["convert", "--to-hf", "--ckpt", str(tmp_path / "ours"),
                 "--out", str(tmp_path / "hf")]) == 0
    assert ("zero biases" in capsys.readouterr().out) == (not bias)

    theirs, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf",
                                                                output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    assert theirs.dtype == torch.float32 and not theirs.training
    idx = random_ids(97, 3, 16)
    torch.testing.assert_close(hf_logits(theirs, idx), our_logits(model, idx), atol=1e-4, rtol=0)

    back = load_checkpoint(tmp_path / "hf").model  # stagegpt -> HF -> stagegpt
    for name, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name


def test_exported_config_is_a_gpt2_config(tmp_path, our_dir):
    main(["convert", "--to-hf", "--ckpt", str(our_dir), "--out", str(tmp_path / "hf")])
    written = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert written["architectures"] == ["GPT2LMHeadModel"]
    assert (written["n_positions"], written["n_ctx"], written["n_embd"]) == (16, 16, 32)
    assert written["bos_token_id"] is None  # a 97-token vocab has no <|endoftext|>
    config = transformers.GPT2Config.from_pretrained(tmp_path / "hf")
    assert (config.model_type, config.activation_function, config.layer_norm_epsilon) == (
        "gpt2", "gelu_new", 1e-5)
    assert config.tie_word_embeddings and config.resid_pdrop == config.attn_pdrop == 0.0
    gpt2 = hf_config(ModelConfig.from_preset("gpt2"))
    assert gpt2["bos_token_id"] == gpt2["eos_token_id"] == 50256


def test_import_export_import_is_bit_exact(tiny_hf, tmp_path):
    _, directory = tiny_hf
    assert main(["convert", "--from-hf", str(directory), "--out", str(tmp_path / "ours"),
                 "--no-tokenizer"]) == 0
    assert main(["convert", "--to-hf", "--ckpt", str(tmp_path / "ours"),
                 "--out", str(tmp_path / "hf")]) == 0
    original = read_safetensors(directory / "model.safetensors")
    exported = read_safetensors(tmp_path / "hf" / "model.safetensors")
    assert original.keys() == exported.keys()
    for key, tensor in original.items():
        assert tensor.dtype == exported[key].dtype and torch.equal(tensor, exported[key]), key
    first, second = load_checkpoint(directory), load_checkpoint(tmp_path / "hf")
    assert first.config == second.config == load_checkpoint(tmp_path / "ours").config
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[name], tensor), name


# --- refused inputs -------------------------------------------------------------------------


class RunsCode:
    """A pickle payload: unpickling it calls open(marker, "w"), creating the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_that_would_run_code_is_refused_and_never_runs(writer, hf_dir, tmp_path, capsys):
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(RunsCode(proof)))  # a plain unpickler does run it ...
    assert proof.exists()

    marker = tmp_path / "pwned"
    payload = {"transformer.wte.weight": RunsCode(marker)}
    (hf_dir / "model.safetensors").unlink()
    with open(hf_dir / "pytorch_model.bin", "wb") as f:
        torch.save(payload, f) if writer == "torch.save" else pickle.dump(payload, f, protocol=2)
    refused(hf_dir, "refusing to load .*pytorch_model.bin")
    assert main(["convert", "--from-hf", str(hf_dir), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could run code" in err
    assert not marker.exists() and not (tmp_path / "out").exists()  # ... stagegpt never does


@pytest.mark.parametrize("kind", ["stagegpt", "hf"])
@pytest.mark.parametrize("key,value", [("n_embd", 64), ("n_layer", 3), ("vocab_size", 50)])
def test_weights_that_do_not_match_their_config_are_refused(kind, key, value, hf_dir, our_dir):
    if kind == "hf":
        edit_json(hf_dir / "config.json", **{key: value})
        refused(hf_dir, "config.json")
    else:
        meta = json.loads((our_dir / "config.json").read_text())
        meta["model"][key] = value
        (our_dir / "config.json").write_text(json.dumps(meta))
        refused(our_dir, "config")


@pytest.mark.parametrize("kind", ["stagegpt", "hf"])
@pytest.mark.parametrize("keep", [None, 0.0, 0.5, 0.999])
def test_missing_or_truncated_weights_are_refused(kind, keep, hf_dir, our_dir):
    directory = hf_dir if kind == "hf" else our_dir
    weights = directory / "model.safetensors"
    if keep is None:
        weights.unlink()
        refused(directory, "model.safetensors is missing")
    else:
        data = weights.read_bytes()
        weights.write_bytes(data[: int(len(data) * keep)])
        refused(directory, "model.safetensors is not a readable safetensors file")


@pytest.mark.parametrize("key,value", [
    ("activation_function", "relu"),
    ("layer_norm_epsilon", 1e-6),
    ("scale_attn_by_inverse_layer_idx", True),
    ("reorder_and_upcast_attn", True),
    ("scale_attn_weights", False),
    ("add_cross_attention", True),
    ("tie_word_embeddings", False),
    ("n_inner", 100),
    ("n_head", 5),
    ("model_type", "gpt_neo"),
])
def test_gpt2_variants_stage5_cannot_compute_are_refused(key, value, hf_dir):
    edit_json(hf_dir / "config.json", **{key: value})
    refused(hf_dir, "model_type 'gpt_neo'.; stagegpt loads gpt2" if key == "model_type"
            else key)


@pytest.mark.parametrize("key,value", [("n_positions", 0), ("resid_pdrop", 1.5),
                                       ("resid_pdrop", "0.1")])
def test_a_bad_gpt2_config_value_is_named_by_its_key_in_config_json(key, value, hf_dir):
    """Not by ModelConfig's field (block_size, dropout), which config.json does not have."""
    edit_json(hf_dir / "config.json", **{key: value})
    refused(hf_dir, rf"config\.json: {key} must be ")


@pytest.mark.parametrize("kind", ["mistral", None, ["llama"]])
def test_convert_names_both_formats_it_reads_when_refusing_a_model_type(kind, hf_dir, tmp_path,
                                                                        capsys):
    """--from-hf reads GPT-2 and Llama dirs; its refusal said only GPT-2 converts."""
    edit_json(hf_dir / "config.json", model_type=kind)
    assert main(["convert", "--from-hf", str(hf_dir), "--no-tokenizer", "--out",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stagegpt loads gpt2 (stage 5) and llama (stage 9)" in err
    assert not (tmp_path / "out").exists()


def test_config_json_that_is_not_an_object_is_refused(hf_dir):
    (hf_dir / "config.json").write_text("[1, 2]")
    refused(hf_dir, "not a stagegpt checkpoint config")
    with pytest.raises(StagegptError, match="not a Hugging Face GPT-2 config"):
        load_hf_model(hf_dir)


def test_only_stages_5_and_9_export(tiny_config, tmp_path, capsys):
    save_checkpoint(tmp_path / "s4", build_model(4, tiny_config), None)
    assert main(["convert", "--to-hf", "--ckpt", str(tmp_path / "s4"),
                 "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stage 4; only stage 5 (as GPT-2) and stage 9 (as Llama)" in err
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("argv,match", [
    (["--to-hf", "--out", "{tmp}/x"], "--to-hf needs --ckpt"),
    (["--from-hf", "{hf}", "--ckpt", "{hf}", "--out", "{tmp}/x"], "--ckpt goes with --to-hf"),
    (["--from-hf", "{hf}", "--out", "{tmp}"], "already exists and is not empty"),
    (["--from-hf", "{hf}", "--out", "{tmp}/x"], "vocab_size 97.*--no-tokenizer"),
    (["--to-hf", "--ckpt", "{hf}", "--no-tokenizer", "--out", "{tmp}/x"],  # was ignored
     "--no-tokenizer goes with --from-hf"),
])
def test_convert_usage_errors_are_one_line(argv, match, hf_dir, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, hf=hf_dir) for a in argv]
    assert main(["convert", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert re.search(match, err), err


# --- the GPT-2 tokenizer --------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_vocab_hf(tmp_path_factory):
    """A tiny model with GPT-2's 50,257-token vocabulary."""
    directory = tmp_path_factory.mktemp("hf") / "vocab"
    hf_model(vocab_size=50257, n_positions=32, n_embd=32, n_layer=1, n_head=2
             ).save_pretrained(directory)
    return directory


@pytest.fixture
def no_gpt2_table(monkeypatch):
    """GPT-2's table cannot be had: $STAGEGPT_GPT2_RANKS names a missing file (no fetch)."""
    from stagegpt.data.tokenizers import gpt2_encoding

    monkeypatch.setenv("STAGEGPT_GPT2_RANKS", "/nonexistent/r50k_base.tiktoken")
    gpt2_encoding.cache_clear()
    yield
    gpt2_encoding.cache_clear()  # the next use reads the real table again


def test_gpt2_vocab_without_the_gpt2_table(gpt2_vocab_hf, no_gpt2_table, tmp_path, capsys):
    """convert --from-hf refuses and says --no-tokenizer: it used to write a checkpoint,
    since GPT2Tokenizer reads its table on first use and nothing used it. load_checkpoint
    keeps the tokenizer, whose first use says what is missing (it was documented to warn
    and return None, which it never did)."""
    assert main(["convert", "--from-hf", str(gpt2_vocab_hf), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "STAGEGPT_GPT2_RANKS" in err and "--no-tokenizer" in err
    assert not (tmp_path / "x").exists()
    assert main(["convert", "--from-hf", str(gpt2_vocab_hf), "--no-tokenizer", "--out",
                 str(tmp_path / "x")]) == 0
    ckpt = load_checkpoint(gpt2_vocab_hf)
    with pytest.raises(StagegptError, match="STAGEGPT_GPT2_RANKS"):
        ckpt.tokenizer.encode("Hello")
    assert generate(ckpt.model, torch.tensor([[1, 2]]), 3, temperature=0).shape == (1, 5)
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(gpt2_vocab_hf), "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "STAGEGPT_GPT2_RANKS" in err


def test_from_hf_writes_the_gpt2_tokenizer(gpt2_vocab_hf, tmp_path):
    from stagegpt.interop.gpt2 import gpt2_tokenizer

    try:
        gpt2_tokenizer()
    except StagegptError as err:
        pytest.skip(f"GPT-2 tokenizer unavailable here: {err}")
    assert main(["convert", "--from-hf", str(gpt2_vocab_hf), "--out", str(tmp_path / "x")]) == 0
    ckpt = load_checkpoint(tmp_path / "x")
    assert load_checkpoint(gpt2_vocab_hf).tokenizer is not None
    text = "Hello, world! GPT-2 interop."
    assert ckpt.tokenizer.decode(ckpt.tokenizer.encode(text)) == text


def test_stage5_trains_step_for_step_like_transformers_gpt2():
    """Same weights, batches and AdamW: 30 training steps through stagegpt's path (chunked
    fused loss, oneDNN products, its own backward) give transformers' losses and weights.
    The batch is big enough (B*T = 512 rows) for the oneDNN path to be taken."""
    config = ModelConfig(vocab_size=97, block_size=64, n_embd=64, n_layer=2, n_head=4,
                         dropout=0.0)
    torch.manual_seed(0)
    ours = perturb(build_model(5, config))
    theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config(config)))
    theirs.load_state_dict(weights_to_hf(ours), strict=False)
    # AdamW divides each gradient by its own running size: eps 1e-6, above the rounding noise
    # of gradients that are ~0 (1e-8 here), keeps that noise from becoming lr-sized steps
    optimizers = [torch.optim.AdamW(param_groups(m, 0.1), lr=3e-3, betas=(0.9, 0.99), eps=1e-6)
                  for m in (ours, theirs)]
    fast = accelerate(ours)
    for step in range(30):
        idx = random_ids(97, 8, 65, seed=step)
        x, y = idx[:, :-1], idx[:, 1:]
        theirs_logits = theirs(x).logits  # (B, T, V)
        losses = [fast.loss(x, y), F.cross_entropy(theirs_logits.flatten(0, 1), y.flatten())]
        for model, loss, optimizer in zip((ours, theirs), losses, optimizers, strict=True):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        assert losses[0].item() == pytest.approx(losses[1].item(), abs=1e-5), step
    C = config.n_embd
    for name, tensor in weights_to_hf(ours).items():
        other = theirs.state_dict()[name]
        if name.endswith("c_attn.bias"):
            # The key bias adds q.b to every score of a row, which softmax cancels: its true
            # gradient is 0, so both sides step it by rounding noise that Adam normalizes.
            tensor, other = (torch.cat([t[:C], t[2 * C:]]) for t in (tensor, other))
        assert torch.allclose(tensor, other, atol=1e-5), name
