"""`stagegpt inspect` and `stagegpt attention`: the trace, the counts, the maps."""

import os
import stat

import pytest
import torch

from stagegpt import ModelConfig, build_model
from stagegpt.cli import main
from stagegpt.data.tokenizers import get_tokenizer
from stagegpt.errors import StagegptError
from stagegpt.interop import load_checkpoint
from stagegpt.tools.attention_maps import attention_maps, plot_attention
from stagegpt.tools.inspection import (
    COMPONENTS,
    flops_per_token,
    format_inspection,
    inspect_model,
    parameter_counts,
    trace_shapes,
)
from stagegpt.train.checkpoints import save_checkpoint

TEXT = "To be, or not to be: that is the question.\n"


def meta_model(stage: int, preset: str):
    with torch.device("meta"):
        return build_model(stage, ModelConfig.from_preset(preset))


def unique_numel(model) -> int:
    return sum({id(p): p.numel() for p in model.parameters()}.values())


def test_gpt2_flops_match_6n_plus_12ltc():
    model = meta_model(5, "gpt2")
    c = model.config
    n = parameter_counts(model)["total"] - model.wpe.weight.numel()
    estimate = 6 * n + 12 * c.n_layer * c.block_size * c.n_embd
    train = inspect_model(model, batch=1, seq=8).flops["train"]
    assert train == flops_per_token(model)["train"]  # the number the ladder reports
    assert abs(train - estimate) / estimate < 0.001  # docs/inspecting.md: to 0.1%


def test_gpt2_parameter_counts_count_the_tied_head_once():
    model = meta_model(5, "gpt2")
    counts = parameter_counts(model)
    assert model.lm_head.weight is model.wte.weight
    assert counts["total"] == 124_439_808 == unique_numel(model)
    assert counts["total"] == sum(counts[c] for c in COMPONENTS)
    assert counts["head"] == 0


@pytest.mark.parametrize("stage", range(1, 10))
def test_trace_params_sum_to_the_model_total(stage, tiny_config):
    model = build_model(stage, tiny_config)
    ins = inspect_model(model, batch=2, seq=5)
    assert ins.params["total"] == unique_numel(model) == model.num_params()
    assert sum(r.params for r in ins.trace) == ins.params["total"]
    assert ins.trace[-1].shape == (2, 5, tiny_config.vocab_size)
    assert "FLOPs per token" in format_inspection(ins)


def test_trace_shows_attention_internals(tiny_config):
    model = build_model(5, tiny_config)
    B, T, C, nh = 2, 6, tiny_config.n_embd, tiny_config.n_head
    rows = [r for r in trace_shapes(model, torch.zeros(B, T, dtype=torch.long))
            if r.module.startswith("h.0.attn") and not r.module.endswith(("c_attn", "c_proj"))]
    by_note = {r.note.split(":")[0]: r.shape for r in rows}
    assert by_note["q"] == (B, T, nh, C // nh) or by_note["q"] == (B, nh, T, C // nh)
    assert by_note["scores = q @ k^T"] == (B, nh, T, T)
    assert by_note["causal mask"] == (B, nh, T, T)
    assert by_note["attention weights"] == (B, nh, T, T)
    assert by_note["merge heads"] == (B, T, C)
    assert rows[-1].operation == "MultiHeadAttention"
    assert not any(layer.explicit for layer in model.modules() if hasattr(layer, "explicit"))


def test_trace_notes_name_what_stages_6_to_9_compute(tiny_config):
    """Stage 9's notes: its norm is RMSNorm, its MLP widens to round(8C/3) (not 4C), k and
    v keep n_kv_head heads until repeated, and q and k are turned by their positions."""
    B, T, C, nh = 2, 6, tiny_config.n_embd, tiny_config.n_head
    model = build_model(9, tiny_config)
    nkv, hd, hidden = tiny_config.kv_heads(), C // nh, tiny_config.swiglu_hidden()
    rows = trace_shapes(model, torch.zeros(B, T, dtype=torch.long))
    notes = {(r.module, r.note): r.shape for r in rows}
    assert notes[("ln_f", "final RMSNorm")] == (B, T, C)
    assert notes[("h.0.mlp.c_fc", "values: widen to hidden")] == (B, T, hidden)
    assert notes[("h.0.mlp.c_gate", "gates: widen to hidden")] == (B, T, hidden)
    assert notes[("h.0.mlp", "gate x value, per hidden unit")] == (B, T, hidden)
    assert notes[("h.0.attn", "k: key/value heads first (B, nkv, T, hd)")] == (B, nkv, T, hd)
    assert notes[("h.0.attn", "q turned by its position")] == (B, nh, T, hd)
    assert notes[("h.0.attn", "k turned by its position")] == (B, nkv, T, hd)
    assert not any("4C" in r.note for r in rows)


def test_trace_of_gpt2_on_meta_is_shapes_only():
    rows = trace_shapes(meta_model(5, "gpt2"), torch.zeros(1, 8, dtype=torch.long,
                                                           device="meta"))
    assert rows[-1].shape == (1, 8, 50_257)
    assert sum(r.params for r in rows) == 124_439_808


@pytest.fixture
def checkpoint(tmp_path, tiny_config):
    tokenizer = get_tokenizer("char", TEXT)
    config = ModelConfig(**{**tiny_config.to_dict(), "vocab_size": tokenizer.vocab_size,
                            "block_size": 64})
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "ckpt", build_model(5, config), tokenizer)


def test_attention_png_weights_are_causal_distributions(checkpoint, tmp_path):
    from stagegpt.interop import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    out = tmp_path / "attn.png"
    maps = plot_attention(ckpt.model, ckpt.tokenizer, TEXT, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    T, c = len(TEXT), ckpt.config
    assert maps.weights.shape == (c.n_layer, c.n_head, T, T)
    assert maps.panels == [(li, hi) for li in range(c.n_layer) for hi in range(c.n_head)]
    assert maps.tokens[0] == "T" and maps.tokens[2] == "␣" and maps.tokens[-1] == "↵"
    for li, hi in maps.panels:
        w = maps.panel(li, hi)
        torch.testing.assert_close(w.sum(-1), torch.ones(T))
        assert torch.all(w.triu(diagonal=1) == 0)
    assert all(not block.attn.explicit and not block.attn.softmax._forward_hooks
               for block in ckpt.model.h)


def test_attention_weights_match_the_module_output(tiny_config):
    """The plotted weights are the ones the model used: weights @ v reproduces attention."""
    model = build_model(3, tiny_config).eval()
    idx = torch.randint(tiny_config.vocab_size, (1, 7))
    weights = attention_maps(model, idx)  # (1, 1, T, T)
    x = model.ln_1(model.embed(idx))
    q, k, v = model.attn.c_attn(x).split(tiny_config.n_embd, dim=2)
    torch.testing.assert_close(model.attn.c_proj(weights[0] @ v), model.attn(x))


def test_attention_cli_one_head(checkpoint, tmp_path, capsys):
    out = tmp_path / "one.png"
    assert main(["attention", "--ckpt", str(checkpoint), "--text", "to be", "--out", str(out),
                 "--layer", "1", "--head", "0"]) == 0
    assert out.is_file() and "1 heatmap(s)" in capsys.readouterr().out


@pytest.mark.parametrize("text, layer, message", [
    ("to be", "9", "--layer must be between 0 and 1"),
    ("t" * 65, None, "--text is 65 tokens"),
    ("", None, "--text must be a non-empty string"),
])
def test_attention_cli_refuses_bad_input(checkpoint, tmp_path, capsys, text, layer, message):
    out = tmp_path / "x.png"
    argv = ["attention", "--ckpt", str(checkpoint), "--out", str(out), "--text", text]
    assert main(argv + (["--layer", layer] if layer else [])) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_attention_writes_only_a_png_and_never_over_a_device(checkpoint, tmp_path, capsys):
    """--out must name a .png (not, say, the checkpoint's own weights) and a regular file
    when it exists: a rename onto /dev/null would replace the device with a file."""
    weights = checkpoint / "model.safetensors"
    before = weights.read_bytes()
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    for out, message in ((weights, "--out must name a .png file"),
                         (fifo, "exists and is not a regular file")):
        assert main(["attention", "--ckpt", str(checkpoint), "--text", "to be", "--out",
                     str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
    assert weights.read_bytes() == before and stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_attention_maps_checks_its_ids(checkpoint):
    model = load_checkpoint(checkpoint).model
    for ids, message in ((torch.tensor([[0, 10_000]]), "token ids in"),
                         ([[0, 1]], "got list"), (torch.tensor([0, 1]), r"got \(2,\)"),
                         # an empty text gave (L, nh, 0, 0); one past the context, a message
                         # naming no parameter
                         (torch.zeros(1, 0, dtype=torch.long), "got 0"),
                         (torch.zeros(1, model.config.block_size + 1, dtype=torch.long),
                          f"1 to {model.config.block_size} tokens")):
        with pytest.raises(StagegptError, match=message) as err:
            attention_maps(model, ids)
        assert err.value.param == "ids"


def test_attention_maps_keeps_only_the_layer_and_head_asked_for(checkpoint):
    """What the playground asks for: one map, not every layer's and head's held at once."""
    model = load_checkpoint(checkpoint).model
    ids = torch.tensor([[1, 5, 2, 7, 3]])
    every = attention_maps(model, ids)  # (L, nh, T, T)
    L, nh = every.shape[:2]
    assert torch.equal(attention_maps(model, ids, layer=L - 1, head=nh - 1),
                       every[L - 1:, nh - 1:])
    assert torch.equal(attention_maps(model, ids, head=0), every[:, :1])
    assert torch.equal(attention_maps(model, ids, layer=0), every[:1])
    for bad in ({"layer": L}, {"head": -1}):
        with pytest.raises(StagegptError, match="must be between 0 and") as err:
            attention_maps(model, ids, **bad)
        assert err.value.param == next(iter(bad))


def test_attention_refuses_a_stage_without_attention(tiny_config):
    with pytest.raises(StagegptError, match="no attention"):
        attention_maps(build_model(2, tiny_config), torch.zeros(1, 3, dtype=torch.long))


def test_inspect_cli_preset_and_checkpoint(checkpoint, capsys):
    assert main(["inspect", "--stage", "5", "--preset", "gpt2"]) == 0
    out = capsys.readouterr().out
    assert "124,439,808" in out and "attention weights" in out
    assert main(["inspect", "--ckpt", str(checkpoint), "--batch", "2", "--seq", "4"]) == 0
    assert "(2, 4, " in capsys.readouterr().out
    assert main(["inspect", "--ckpt", str(checkpoint), "--stage", "3"]) == 2
    assert "holds stage 5" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--batch", str(10**20)], "--batch-size must be an integer from 1 to 1,048,576"),
    (["--batch", "0"], "--batch-size must be an integer from 1"),
    (["--seq", "0"], "--seq must be between 1 and block_size"),
])
def test_inspect_bounds_its_trace_on_the_meta_device_too(capsys, flags, message):
    """A preset is traced on the meta device, where no memory check applies: the batch is
    bounded itself, so 10**20 rows are refused instead of overflowing inside torch."""
    assert main(["inspect", "--stage", "5", "--preset", "gpt2-xl", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_a_real_trace_checks_its_activations_fit(checkpoint, monkeypatch):
    """On a real device the trace's activations are checked against free memory."""
    monkeypatch.setattr("stagegpt.limits.available_bytes", lambda: 1 << 20)
    model = load_checkpoint(checkpoint).model
    with pytest.raises(StagegptError, match="needs .* GB of memory") as err:
        inspect_model(model, batch=1000, seq=8)
    assert err.value.param == "batch"
