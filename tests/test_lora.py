"""LoRA: the stated trainable count, equal to the base at the start (B = 0), the scaling
alpha / r, and merged == adapted."""

import copy

import pytest
import torch
from helpers import peaky_model

from stagegpt import ModelConfig, build_model
from stagegpt.errors import StagegptError
from stagegpt.finetune.lora import (
    LoRAConfig,
    LoRALinear,
    adapter_state,
    attach_lora,
    load_adapter_state,
    merge_lora,
    trainable_count,
)

CONFIG = ModelConfig(vocab_size=50, block_size=16, n_embd=32, n_layer=2, n_head=2, n_kv_head=1,
                     mlp_hidden=64)


def ids(seed=0):
    return torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(seed))


def randomize_adapters(model, seed=1, std=0.1):
    """Adapters as training leaves them: B no longer zero (weights of a trained size)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in adapter_state(model).items():
            layer = model.get_submodule(name.rpartition(".")[0])
            getattr(layer, name.rpartition(".")[2]).copy_(
                std * torch.randn(tensor.shape, generator=g))


def trained_like(stage):
    torch.manual_seed(0)
    return build_model(stage, CONFIG).eval()


@pytest.mark.parametrize("rank", [1, 4])
def test_trainable_count_is_r_times_in_plus_out_per_layer(rank):
    model = build_model(5, CONFIG)
    attach_lora(model, LoRAConfig(rank, 8.0, ("c_attn", "c_proj", "c_fc")))
    C = 32
    per_block = rank * ((C + 3 * C) + (C + C) + (C + 4 * C) + (4 * C + C))  # attn, proj, fc, proj
    assert trainable_count(model) == 2 * per_block == rank * 1024


def test_only_the_named_layers_are_adapted():
    model = build_model(5, CONFIG)
    names = attach_lora(model, LoRAConfig(2, 4.0, ("attn.c_proj",)))
    assert names == ["h.0.attn.c_proj", "h.1.attn.c_proj"]
    assert isinstance(model.h[0].mlp.c_proj, torch.nn.Linear)
    assert not isinstance(model.h[0].mlp.c_proj, LoRALinear)


@pytest.mark.parametrize("stage", [5, 9])
def test_adapted_model_starts_equal_to_the_base(stage):
    base = peaky_model(stage, CONFIG)
    adapted = copy.deepcopy(base)
    attach_lora(adapted, LoRAConfig(4, 8.0, ("c_attn", "c_proj", "c_fc")))
    assert all(torch.count_nonzero(t) == 0 for k, t in adapter_state(adapted).items()
               if k.endswith("lora_B"))
    assert torch.equal(adapted(ids())[0], base(ids())[0])


@pytest.mark.parametrize("stage,targets", [(5, ("c_attn", "c_proj", "c_fc")),
                                           (9, ("c_attn", "c_proj", "c_fc", "c_gate"))])
def test_merged_model_gives_the_adapted_logits(stage, targets):
    model = trained_like(stage)
    plain_keys = set(model.state_dict())
    attach_lora(model, LoRAConfig(4, 8.0, targets))
    randomize_adapters(model)
    x = ids()
    with torch.no_grad():
        adapted = model(x)[0]
        merged = merge_lora(copy.deepcopy(model))(x)[0]
    assert (adapted - merged).abs().max() < 1e-5
    assert (adapted - trained_like(stage)(x)[0]).abs().max() > 1e-2  # the adapters act
    assert set(merge_lora(model).state_dict()) == plain_keys


@pytest.mark.parametrize("rank,alpha", [(1, 1.0), (2, 8.0), (4, 2.0)])
def test_the_update_is_scaled_by_alpha_over_rank(rank, alpha):
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 5)
    layer = LoRALinear(copy.deepcopy(base), rank, alpha)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 6)
    expected = base(x) + (alpha / rank) * (x @ layer.lora_A.T @ layer.lora_B.T)
    assert torch.allclose(layer(x), expected, atol=1e-6)
    assert LoRAConfig(rank, alpha).scaling == alpha / rank


def test_adapters_round_trip_and_refuse_another_shape():
    model = build_model(5, CONFIG)
    attach_lora(model, LoRAConfig(2, 4.0))
    randomize_adapters(model)
    other = build_model(5, CONFIG)
    attach_lora(other, LoRAConfig(2, 4.0))
    load_adapter_state(other, adapter_state(model), "test")
    assert all(torch.equal(a, b) for a, b in zip(adapter_state(model).values(),
                                                 adapter_state(other).values(), strict=True))
    wrong = build_model(5, CONFIG)
    attach_lora(wrong, LoRAConfig(3, 4.0))
    with pytest.raises(StagegptError, match="shape"):
        load_adapter_state(wrong, adapter_state(model), "test")
    doubles = {k: v.double() for k, v in adapter_state(model).items()}
    with pytest.raises(StagegptError, match=r"^test: h\.0\.attn\.c_attn\.lora_A holds float64 "
                       "values, the adapters need float32"):
        load_adapter_state(other, doubles, "test")


@pytest.mark.parametrize("kwargs,match", [
    ({"rank": 0}, "^rank must be"), ({"alpha": -1.0}, "^alpha must be"),
    ({"alpha": float("nan")}, "^alpha must be"), ({"alpha": float("inf")}, "^alpha must be"),
    ({"alpha": 1e308}, "^alpha must be a number > 0 and at most 1,000,000, got 1e"),
    ({"targets": ("wte",)}, "unknown layer"),
    ({"targets": ("c_attn", "c_fc", "c_attn")}, "'c_attn' is named twice"),
    ({"targets": ()}, "at least one"),
    ({"targets": "c_attn"}, "^targets must be a list of layer names, got str$")])
def test_bad_lora_settings_are_refused(kwargs, match):
    """Named by LoRAConfig's own parameters (the CLI shows --lora-rank and so on)."""
    with pytest.raises(StagegptError, match=match) as err:
        LoRAConfig(**kwargs)
    assert err.value.param == next(iter(kwargs))


def test_a_merge_that_would_overflow_is_refused():
    """Finite adapters can fold into infinite weights (alpha 1e308 in a lora.json did):
    merge wrote them, and no loader read the merged checkpoint."""
    model = build_model(5, CONFIG)
    attach_lora(model, LoRAConfig(2, 4.0, ("c_fc",)))
    randomize_adapters(model, std=1e19)  # (B A) entries ~ 1e38, times alpha / r = 2
    with pytest.raises(StagegptError, match=r"^folding the adapters of h\.0\.mlp\.c_fc into its "
                       r"weight gives NaN or infinite values \(alpha / rank is 2\)$"):
        merge_lora(model)


@pytest.mark.parametrize("make,param", [
    (lambda: LoRALinear(torch.nn.Linear(4, 4), 0, 1.0), "rank"),  # was ZeroDivisionError
    (lambda: LoRALinear(torch.nn.Linear(4, 4), 2, float("nan")), "alpha"),
    (lambda: LoRALinear(torch.nn.Conv1d(4, 4, 1), 2, 4.0), "base"),
    (lambda: attach_lora(build_model(5, CONFIG), {"rank": 2}), "config"),  # AttributeError
])
def test_the_lora_layer_and_attach_lora_name_a_bad_parameter(make, param):
    with pytest.raises(StagegptError) as err:
        make()
    assert err.value.param == param and str(err.value).startswith(param)


def test_targets_given_as_a_list_equal_the_same_tuple():
    assert LoRAConfig(2, 4.0, ["c_attn"]) == LoRAConfig(2, 4.0, ("c_attn",))
    assert LoRAConfig(2, 4.0, ["c_attn"]).targets == ("c_attn",)


def test_a_target_the_stage_lacks_is_refused():
    with pytest.raises(StagegptError, match="c_gate"):
        attach_lora(build_model(5, CONFIG), LoRAConfig(2, 4.0, ("c_gate",)))


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_last_block_on_a_stage_without_blocks_names_the_train_parameter(stage):
    from stagegpt.finetune.trainer import freeze_for

    with pytest.raises(StagegptError) as refused:
        freeze_for(build_model(stage, CONFIG), "last-block")
    assert str(refused.value) == (f"train=last-block needs transformer blocks, and stage "
                                  f"{stage} has none; use head or all")
    assert refused.value.param == "train"


@pytest.mark.parametrize("mode,expected", [
    ("head", set()), ("all", None),
    ("last-block", {"h.1.", "ln_f."}),
])
def test_train_modes_unfreeze_what_they_say(mode, expected):
    from stagegpt.finetune.trainer import freeze_for

    model = build_model(5, CONFIG)
    freeze_for(model, mode)
    learning = {n for n, p in model.named_parameters() if p.requires_grad}
    if expected is None:
        assert learning == {n for n, _ in model.named_parameters()}
    else:
        assert {n for n in learning if not any(n.startswith(e) for e in expected)} == set()
        assert all(any(n.startswith(e) for n in learning) for e in expected)
