import math

import pytest
import torch

from stagegpt import ModelConfig, build_model
from stagegpt.errors import StagegptError
from stagegpt.model.layers import (
    KVCache,
    MultiHeadAttention,
    explicit_attention,
    reference_attention,
)

STAGES = [1, 2, 3, 4, 5]


def random_batch(config, B=3, T=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = T or config.block_size
    return torch.randint(0, config.vocab_size, (B, T), generator=g)


@pytest.mark.parametrize("stage", STAGES)
def test_output_shape_and_initial_loss(stage, tiny_config):
    torch.manual_seed(0)
    model = build_model(stage, tiny_config)
    idx, targets = random_batch(tiny_config, seed=1), random_batch(tiny_config, seed=2)
    logits, loss = model(idx, targets)
    assert logits.shape == (3, tiny_config.block_size, tiny_config.vocab_size)
    assert abs(loss.item() - math.log(tiny_config.vocab_size)) < 0.15


@pytest.mark.parametrize("stage", STAGES)
def test_initial_loss_at_gpt2_vocab(stage):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=50257, block_size=8, n_embd=64, n_layer=2, n_head=2)
    model = build_model(stage, config)
    _, loss = model(random_batch(config, B=2, seed=1), random_batch(config, B=2, seed=2))
    assert abs(loss.item() - math.log(50257)) < 0.15


@pytest.mark.parametrize("stage", [3, 4, 5, 6, 7, 8, 9])
def test_attention_stages_are_causal(stage, tiny_config):
    torch.manual_seed(0)
    model = build_model(stage, tiny_config).eval()
    idx = random_batch(tiny_config, B=2)
    base, _ = model(idx)
    for t in (0, 5, tiny_config.block_size - 2):
        changed = idx.clone()
        changed[:, t + 1:] = (changed[:, t + 1:] + 1) % tiny_config.vocab_size
        logits, _ = model(changed)
        assert torch.equal(logits[:, : t + 1], base[:, : t + 1])
        assert not torch.allclose(logits[:, t + 1:], base[:, t + 1:])


def test_stage1_depends_only_on_current_token(tiny_config):
    model = build_model(1, tiny_config).eval()
    idx = random_batch(tiny_config, B=1)
    logits, _ = model(idx)
    for t in range(tiny_config.block_size):
        alone, _ = model(idx[:, t:t + 1])
        assert torch.allclose(logits[:, t], alone[:, 0], atol=1e-6)


def test_stage2_depends_only_on_token_and_position(tiny_config):
    model = build_model(2, tiny_config).eval()
    idx = random_batch(tiny_config, B=1)
    logits, _ = model(idx)
    shuffled = idx.clone()
    shuffled[0, :5] = torch.flip(shuffled[0, :5], dims=[0])  # change the past only
    shuffled_logits, _ = model(shuffled)
    assert torch.equal(logits[:, 5:], shuffled_logits[:, 5:])
    same_token = torch.full_like(idx, 7)
    same_logits, _ = model(same_token)
    assert not torch.allclose(same_logits[0, 0], same_logits[0, 1])  # position matters


@pytest.mark.parametrize("stage", [2, 3, 4, 5])
def test_head_is_tied_to_embedding(stage, tiny_config):
    model = build_model(stage, tiny_config)
    assert model.lm_head.weight is model.wte.weight
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()
    names = [name for name, _ in model.named_parameters()]
    assert "lm_head.weight" not in names  # counted once, as wte.weight
    counted = sum(p.numel() for p in model.parameters())
    assert model.num_params() == counted
    untied = sum(p.numel() for p in model.state_dict().values())
    assert untied - counted == tiny_config.vocab_size * tiny_config.n_embd


def test_stage1_head_is_not_tied(tiny_config):
    model = build_model(1, tiny_config)
    assert model.lm_head.weight is not model.wte.weight


def test_gpt2_preset_has_gpt2_small_parameter_count():
    with torch.device("meta"):
        model = build_model(5, ModelConfig.from_preset("gpt2"))
    assert model.num_params() == 124_439_808


def test_seed_preset_reports_its_count():
    with torch.device("meta"):
        model = build_model(5, ModelConfig.from_preset("seed"))
    # 50257*256 + 256*256 (embeddings) + 12 blocks of 12*256^2 + 13*256, + final norm
    expected = 50257 * 256 + 256 * 256 + 12 * (12 * 256 * 256 + 13 * 256) + 2 * 256
    assert model.num_params() == expected == 22_408_960


@pytest.mark.parametrize("stage", [3, 4, 5, 6, 7, 8, 9])
def test_fused_attention_matches_the_explicit_softmax(stage, tiny_config):
    torch.manual_seed(0)
    model = build_model(stage, tiny_config).eval()
    idx = random_batch(tiny_config)
    fused, _ = model(idx)
    with explicit_attention(model) as layers:
        assert all(layer.explicit for layer in layers)
        explicit, _ = model(idx)
    assert not any(layer.explicit for layer in layers)
    assert torch.allclose(fused, explicit, atol=1e-5)


@pytest.mark.parametrize("q_len", [1, 3, 8])
def test_attention_paths_agree_with_offset_queries(q_len):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, q_len, 8, generator=g)
    k, v = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    ref, weights = reference_attention(q, k, v)
    attn = MultiHeadAttention(24, 3)
    assert torch.allclose(attn.attend(q, k, v), ref, atol=1e-5)
    assert torch.allclose(attn.attend_explicitly(q, k, v), ref, atol=1e-6)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 3, q_len))
    assert torch.all(weights[..., :, -1][..., :-1] == 0)  # the last key is future to earlier q


def test_kv_cache_prefill_then_decode_equals_full_attention():
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 2).eval()
    x = torch.randn(1, 6, 16)
    full = attn(x)
    cache = KVCache(1, 2, 8, 8)
    parts = [attn(x[:, :4], cache, 0), attn(x[:, 4:5], cache, 4), attn(x[:, 5:6], cache, 5)]
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-6)


def test_longer_than_block_size_is_a_clear_error(tiny_config):
    model = build_model(5, tiny_config)
    with pytest.raises(StagegptError, match="block_size"):
        model(random_batch(tiny_config, T=tiny_config.block_size + 1))


@pytest.mark.parametrize("bad", [dict(n_embd=30, n_head=4), dict(n_layer=0),
                                 dict(dropout=1.0), dict(vocab_size=-1), dict(dropout="0.1"),
                                 dict(dropout=math.nan), dict(n_embd=64.0), dict(bias="yes"),
                                 dict(dropout=10**400), dict(rope_theta=10**400),
                                 dict(rope_theta=math.inf), dict(rope_theta=1)])
def test_bad_config_is_a_clear_error(bad):
    with pytest.raises(StagegptError):
        ModelConfig(**bad)


@pytest.mark.parametrize("bad, param", [
    (dict(vocab_size=0), "vocab_size"), (dict(block_size=-1), "block_size"),
    (dict(n_embd=2**41), "n_embd"), (dict(n_layer=0), "n_layer"), (dict(n_head=0), "n_head"),
    (dict(dropout=1.5), "dropout"), (dict(n_embd=30, n_head=4), "n_head")])
def test_config_errors_start_with_their_parameter(bad, param):
    with pytest.raises(StagegptError) as err:
        ModelConfig(**bad)
    assert err.value.param == param and str(err.value).startswith(f"{param} ")


def test_a_saved_config_names_no_flag():
    with pytest.raises(StagegptError, match="^model config: n_head must") as err:
        ModelConfig.from_dict({"n_head": 0})
    assert err.value.param is None


def test_unknown_preset_overrides_are_one_line_errors():
    with pytest.raises(StagegptError, match="unknown ModelConfig settings: foo;"):
        ModelConfig.from_preset("micro", foo=1)


def test_unknown_stage_and_preset(tiny_config):
    with pytest.raises(StagegptError, match="stage"):
        build_model(10, tiny_config)
    with pytest.raises(StagegptError, match="config must be a ModelConfig"):
        build_model(5, dict)
    with pytest.raises(StagegptError, match="stage"):
        build_model(True, tiny_config)
    with pytest.raises(StagegptError, match="preset"):
        ModelConfig.from_preset("gpt5")


@pytest.mark.parametrize("stage", STAGES)
def test_save_and_load_round_trip(stage, tiny_config, tmp_path):
    """A checkpoint gives back the same stage, config and logits (stage 9 untied too)."""
    from stagegpt.interop import load_checkpoint
    from stagegpt.train.checkpoints import save_checkpoint

    configs = [tiny_config]
    if stage == 9:
        configs.append(ModelConfig(**{**tiny_config.to_dict(), "tie_head": False}))
    for i, config in enumerate(configs):
        torch.manual_seed(stage)
        model = build_model(stage, config).eval()
        save_checkpoint(tmp_path / f"ckpt{i}", model, None)
        loaded = load_checkpoint(tmp_path / f"ckpt{i}")
        assert loaded.stage == stage and loaded.config == config
        idx = random_batch(config, B=2)
        with torch.no_grad():
            assert torch.equal(loaded.model(idx)[0], model(idx)[0])
        tied = loaded.model.lm_head.weight is loaded.model.wte.weight
        assert tied == (stage != 1 and config.tie_head)
