"""Stages 6-9, one idea each beyond GPT-2, and stage 9 against Hugging Face's Llama."""

import math

import pytest
import torch
import transformers

from stagegpt import ModelConfig, build_model, generate
from stagegpt.interop.llama import llama_config, weights_from_llama, weights_to_llama
from stagegpt.model.layers import MLP, RotaryAttention, SwiGLU

CONFIG = ModelConfig(vocab_size=61, block_size=16, n_embd=48, n_layer=2, n_head=4)


def ids(B=2, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, CONFIG.vocab_size, (B, T), generator=g)


@pytest.mark.parametrize("stage", [6, 7, 8, 9])
def test_each_stage_is_a_language_model_starting_near_chance(stage):
    torch.manual_seed(0)
    model = build_model(stage, CONFIG)
    x = ids()
    logits, loss = model(x, ids(seed=1))
    assert logits.shape == (2, 12, CONFIG.vocab_size)
    assert abs(loss.item() - math.log(CONFIG.vocab_size)) < 0.2


def test_stage6_has_rmsnorm_and_no_bias():
    model = build_model(6, CONFIG)
    assert not any(name.endswith("bias") for name, _ in model.named_parameters())
    assert all(isinstance(m, torch.nn.RMSNorm) for m in (model.ln_f, model.h[0].ln_1))


def test_stage7_positions_are_relative():
    """No wpe; shifting every position by the same offset changes nothing: q.k depends on
    positions only through their difference."""
    torch.manual_seed(0)
    model = build_model(7, CONFIG).eval()
    assert model.wpe is None and isinstance(model.h[0].attn, RotaryAttention)
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(model.body(x, start=0), model.body(x, start=37),
                                   rtol=1e-4, atol=1e-5)
    five = build_model(5, CONFIG).eval()
    with torch.no_grad():  # learned positions: a shift changes the output
        assert not torch.allclose(five.body(x[:, :4], start=0), five.body(x[:, :4], start=4))


def rotation_matrix(position: int, hd: int, theta: float) -> torch.Tensor:
    """RoPE built the long way: a (hd, hd) matrix turning feature pair (i, i + hd/2) by
    position * theta^(-2i/hd), one 2x2 rotation per pair, in float64."""
    matrix = torch.zeros(hd, hd, dtype=torch.float64)
    for i in range(hd // 2):
        angle = position * theta ** (-2 * i / hd)
        c, s = math.cos(angle), math.sin(angle)
        j = i + hd // 2
        matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix


def test_rope_equals_explicit_rotation_matrices():
    attn = RotaryAttention(n_embd=64, n_head=4, theta=500.0)
    x = torch.randn(2, 4, 9, 16)  # (B, nh, T, hd)
    # within a context of a few hundred tokens: float32 angles keep 1e-5 (at 1000 they
    # are off by about 6e-5, float32's spacing there)
    pos = torch.tensor([0, 1, 2, 3, 7, 15, 31, 100, 255])
    got = attn.rotate(x, pos)
    want = torch.stack([x[:, :, t].double() @ rotation_matrix(int(p), 16, 500.0).T
                        for t, p in enumerate(pos)], dim=2)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)


def test_gqa_with_as_many_kv_heads_as_heads_is_plain_multi_head_attention():
    """Stage 9 with n_kv_head == n_head has stage 8's very parameters and computes exactly
    its function; fewer key/value heads change the shapes."""
    torch.manual_seed(0)
    eight = build_model(8, CONFIG).eval()
    nine = build_model(9, ModelConfig(**{**CONFIG.to_dict(), "n_kv_head": CONFIG.n_head}))
    nine.load_state_dict(eight.state_dict())
    x = ids()
    with torch.no_grad():
        assert torch.equal(nine.eval()(x)[0], eight(x)[0])
    grouped = build_model(9, ModelConfig(**{**CONFIG.to_dict(), "n_kv_head": 2}))
    assert grouped.h[0].attn.c_attn.weight.shape[0] < eight.h[0].attn.c_attn.weight.shape[0]


def test_stage8_swiglu_matches_the_gelu_mlp_in_parameters():
    """hidden = round(8C/3): three C x hidden matrices against two C x 4C ones."""
    gelu = sum(p.numel() for p in MLP(CONFIG.n_embd, bias=False).parameters())
    model = build_model(8, CONFIG)
    assert isinstance(model.h[0].mlp, SwiGLU)
    swiglu = sum(p.numel() for p in model.h[0].mlp.parameters())
    assert swiglu == 3 * 48 * 128 and gelu == 8 * 48 * 48 and swiglu == gelu


def test_stage9_caches_fewer_bytes_per_token():
    eight = build_model(8, CONFIG).make_kv_cache(1)
    nine = build_model(9, ModelConfig(**{**CONFIG.to_dict(), "n_kv_head": 1})).make_kv_cache(1)
    per_token = [sum(c.k.numel() + c.v.numel() for c in caches) * 4 / CONFIG.block_size
                 for caches in (eight, nine)]
    assert per_token == [2 * 2 * 48 * 4, 2 * 2 * 12 * 4]  # layers x (k, v) x width x fp32
    by_default = build_model(9, CONFIG)  # two query heads per key/value head
    assert by_default.h[0].attn.n_kv_head == CONFIG.n_head // 2 == CONFIG.kv_heads()
    assert ModelConfig(n_embd=48, n_head=3).kv_heads() == 3  # odd: no grouping


@pytest.mark.parametrize("tie", [True, False])
def test_stage9_is_hugging_face_llama(tie):
    """Logits within 1e-4 and the same greedy tokens as LlamaForCausalLM with the same
    weights, grouped-query attention (4 query heads, 2 key/value heads) and both heads."""
    config = ModelConfig(**{**CONFIG.to_dict(), "n_kv_head": 2, "tie_head": tie,
                            "rope_theta": 500.0})
    torch.manual_seed(0)
    ours = build_model(9, config).eval()
    with torch.no_grad():  # off the init (norms too), and peaky: decisive greedy choices
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * (0.3 if p.dim() == 2 else 0.05))
    theirs = transformers.LlamaForCausalLM(transformers.LlamaConfig(**llama_config(config)))
    missing, unexpected = theirs.load_state_dict(weights_to_llama(ours), strict=False)
    assert not unexpected and missing == (["lm_head.weight"] if tie else [])
    theirs.eval()
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], theirs(x).logits, rtol=0, atol=1e-4)
        prompt = x[:1, :4]
        hf_greedy = theirs.generate(prompt, attention_mask=torch.ones_like(prompt),
                                    max_new_tokens=8, min_new_tokens=8, do_sample=False,
                                    pad_token_id=0)
    assert torch.equal(generate(ours, prompt, 8, temperature=0), hf_greedy)
    back = build_model(9, config)
    back.load_state_dict(weights_from_llama(theirs.state_dict(), config), strict=not tie)
    back.tie_weights()
    with torch.no_grad():
        assert torch.equal(back.eval()(x)[0], ours(x)[0])


@pytest.mark.parametrize("text, stages", [("1-5", [1, 2, 3, 4, 5]), ("5-9", [5, 6, 7, 8, 9]),
                                          ("1,3,7-9", [1, 3, 7, 8, 9]), ("9", [9])])
def test_ladder_stage_lists_and_ranges(text, stages):
    from stagegpt.cli.ladder import parse_stages

    assert parse_stages(text) == stages


@pytest.mark.parametrize("text", ["0-3", "5-10", "a-b", "", "9-5", "1-99999999999999999999"])
def test_ladder_refuses_stages_it_does_not_have(text):
    from stagegpt.cli.ladder import parse_stages
    from stagegpt.errors import StagegptError

    with pytest.raises(StagegptError, match="--stages"):
        parse_stages(text)


def test_a_ladder_of_stages_6_to_9_trains_and_tabulates(markov_data, tmp_path):
    from stagegpt.tools.ladder import run_ladder
    from stagegpt.train.config import TrainConfig

    data = markov_data(order=1, vocab=16, tokens=4000, seed=3)
    train = TrainConfig(max_steps=3, batch_size=2, warmup_steps=1, eval_every=3,
                        eval_batches=1, ckpt_every=3)
    model = ModelConfig(block_size=8, n_embd=16, n_layer=1, n_head=2, n_kv_head=1)
    rows = run_ladder(data, tmp_path / "ladder", model, train, stages=(6, 7, 8, 9),
                      sample_tokens=5, progress=False)
    assert [r.stage for r in rows] == [6, 7, 8, 9]
    table = (tmp_path / "ladder" / "ladder.md").read_text()
    assert "grouped-query attention" in table and "RMSNorm" in table
    # one layer caching k and v of width 2 heads x 8 (stage 8) or 1 key/value head (stage 9)
    assert [r.kv_bytes_per_token for r in rows] == [128, 128, 128, 64]
    assert "KV cache bytes/token" in table and "| 64 |" in table


def test_a_run_saved_before_the_new_config_fields_still_resumes(markov_data, tmp_path):
    """config.json of an older stagegpt lacks n_kv_head, rope_theta, mlp_hidden, tie_head."""
    import json
    import shutil

    from stagegpt.cli import main
    from stagegpt.train.rundir import step_dirs

    data = markov_data(order=1, vocab=16, tokens=4000, seed=3)
    run = tmp_path / "run"
    argv = ["train", "--stage", "5", "--data", str(data), "--out", str(run), "--max-steps",
            "4", "--ckpt-every", "2", "--eval-batches", "1", "--block-size", "8", "--n-embd",
            "16", "--n-layer", "1", "--n-head", "2", "--warmup-steps", "1", "--no-progress"]
    assert main(argv) == 0
    shutil.rmtree(step_dirs(run)[-1])  # stopped at step 2, as an old run might have
    old = step_dirs(run)[-1]
    config = json.loads((old / "config.json").read_text())
    for key in ("n_kv_head", "rope_theta", "mlp_hidden", "tie_head"):
        del config["model"][key]
    (old / "config.json").write_text(json.dumps(config))
    assert main([*argv, "--resume"]) == 0
    assert step_dirs(run)[-1].name == "step_00000004"


def test_convert_stage9_to_a_llama_dir_and_back(tmp_path, capsys):
    """`stagegpt convert` writes a dir transformers loads as LlamaForCausalLM (offline), and
    reads it back into stage 9: the same logits all the way."""
    from stagegpt import load_checkpoint
    from stagegpt.cli import main
    from stagegpt.train.checkpoints import save_checkpoint

    config = ModelConfig(**{**CONFIG.to_dict(), "n_kv_head": 2})
    torch.manual_seed(0)
    ours = build_model(9, config).eval()
    save_checkpoint(tmp_path / "ckpt", ours, None)
    assert main(["convert", "--to-hf", "--ckpt", str(tmp_path / "ckpt"), "--out",
                 str(tmp_path / "llama")]) == 0
    theirs = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "llama").eval()
    assert main(["convert", "--from-hf", str(tmp_path / "llama"), "--no-tokenizer", "--out",
                 str(tmp_path / "back")]) == 0
    back = load_checkpoint(tmp_path / "back").model
    direct = load_checkpoint(tmp_path / "llama")
    assert direct.stage == back.stage == 9
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, ours(x)[0], rtol=0, atol=1e-4)
        assert torch.equal(back(x)[0], ours(x)[0])
        assert torch.equal(direct.model(x)[0], ours(x)[0])
    assert "stage 9" in capsys.readouterr().out


def drop(key):
    return lambda config: config.pop(key)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(hidden_act="gelu"), "hidden_act = 'gelu' but stage 9 computes 'silu'"),
    (drop("rms_norm_eps"), "rms_norm_eps is unset (so 1e-06) but stage 9 computes 1e-05"),
    (lambda c: c.update(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5,
                                         "factor": 8.0}),
     "rope_type = 'llama3' (scaled rotary positions) but stage 9 computes 'default'"),
    (lambda c: c.update(rope_theta=10.0), "rope_theta = 10.0 but rope_parameters says"),
    (lambda c: c.update(rope_parameters=[1]), "rope_parameters must be an object, got list"),
])
def test_a_llama_variant_stage9_does_not_compute_is_refused(tmp_path, capsys, edit, message):
    """An absent key is transformers' default for it, and the rotary settings are read
    where transformers 5 writes them (rope_parameters)."""
    import json

    from stagegpt.cli import main
    from stagegpt.interop.llama import save_llama_dir

    save_llama_dir(tmp_path / "llama", build_model(9, CONFIG))
    config = json.loads((tmp_path / "llama" / "config.json").read_text())
    edit(config)
    (tmp_path / "llama" / "config.json").write_text(json.dumps(config))
    assert main(["convert", "--from-hf", str(tmp_path / "llama"), "--no-tokenizer", "--out",
                 str(tmp_path / "back")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "back").exists()


@pytest.mark.parametrize("kv", ["absent", None])
def test_a_llama_config_without_key_value_heads_is_multi_head_as_in_transformers(tmp_path, kv):
    """LlamaConfig reads an absent or null num_key_value_heads as num_attention_heads; so
    does the converter (it took stage 9's default of n_head // 2 and refused the weights)."""
    import json

    from stagegpt import load_checkpoint

    torch.manual_seed(0)
    theirs = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **llama_config(ModelConfig(**{**CONFIG.to_dict(), "n_kv_head": 4})))).eval()
    theirs.save_pretrained(tmp_path / "llama")
    path = tmp_path / "llama" / "config.json"
    config = json.loads(path.read_text())
    config.pop("num_key_value_heads") if kv == "absent" else config.update(
        num_key_value_heads=kv)
    path.write_text(json.dumps(config))
    assert transformers.LlamaConfig.from_pretrained(tmp_path / "llama").num_key_value_heads == 4
    ours = load_checkpoint(tmp_path / "llama").model
    assert ours.config.kv_heads() == 4
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], theirs(x).logits, rtol=0, atol=1e-4)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(num_key_value_heads=3),
     "num_attention_heads (4) must be a multiple of num_key_value_heads (3)"),
    (lambda c: c.update(max_position_embeddings=0), "max_position_embeddings must be a posit"),
    (lambda c: c.update(intermediate_size=-5), "intermediate_size must be a positive"),
    (lambda c: c.update(num_attention_heads=0), "num_attention_heads must be a positive"),
    (lambda c: c.update(attention_dropout="x"), "attention_dropout must be a number"),
])
def test_a_bad_llama_config_value_is_named_by_its_key_in_config_json(tmp_path, edit, message):
    """The error names the key the user reads in config.json, not ModelConfig's field."""
    import json

    from stagegpt import load_checkpoint
    from stagegpt.errors import StagegptError
    from stagegpt.interop.llama import save_llama_dir

    save_llama_dir(tmp_path / "llama", build_model(9, CONFIG))
    path = tmp_path / "llama" / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    with pytest.raises(StagegptError, match=r"config\.json: " + message.replace("(", r"\(")
                       .replace(")", r"\)")):
        load_checkpoint(tmp_path / "llama")


def test_a_llama_dir_transformers_saved_keeps_its_rotary_base(tmp_path):
    """transformers 5 writes rope_theta inside rope_parameters; older files store the
    rotary inv_freq buffers too (nothing learned: skipped). Same logits either way."""
    from safetensors.torch import load_file, save_file

    from stagegpt import load_checkpoint
    from stagegpt.interop.llama import save_llama_dir

    config = ModelConfig(**{**CONFIG.to_dict(), "rope_theta": 500_000.0})
    ours = build_model(9, config).eval()
    save_llama_dir(tmp_path / "ours", ours)
    transformers.LlamaForCausalLM.from_pretrained(tmp_path / "ours").save_pretrained(
        tmp_path / "resaved")
    weights_file = tmp_path / "resaved" / "model.safetensors"
    weights = load_file(weights_file)
    weights["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    save_file(weights, weights_file)
    back = load_checkpoint(tmp_path / "resaved").model
    assert back.config.rope_theta == 500_000.0
    x = ids()
    with torch.no_grad():
        assert torch.equal(back(x)[0], ours(x)[0])


@pytest.mark.parametrize("stage", [7, 8, 9])
def test_past_block_size_a_rotary_cache_slides_along_without_a_prefill(stage):
    """Each new token is one step (T = 1) however long the text grows: the full cache drops
    its oldest entry and turns the rest back one position. With one layer, whose keys and
    values depend only on the token and its place, that is exactly the window run again."""
    config = ModelConfig(**{**CONFIG.to_dict(), "n_layer": 1, "n_kv_head": 2})
    from helpers import peaky_model

    model = peaky_model(stage, config, seed=stage)
    lengths = []
    hook = model.wte.register_forward_hook(lambda m, i, o: lengths.append(i[0].size(1)))
    prompt = ids(B=1, T=5)
    cached = generate(model, prompt, 40, temperature=0, fast=False)
    hook.remove()
    assert lengths == [5] + [1] * 39  # no window is ever run again
    assert torch.equal(cached, generate(model, prompt, 40, temperature=0, use_cache=False))
    assert len(set(cached[0, 16:].tolist())) > 3  # varied: the comparison is not vacuous


@pytest.mark.parametrize("stage", [7, 8, 9])
def test_with_more_layers_sliding_is_streaming_and_refilling_is_exact(stage):
    """Two layers: the sliding cache keeps what deeper layers computed while the dropped
    token was visible, so past block_size its tokens may differ from the window's run;
    slide=False runs the window again and equals decoding without a cache exactly."""
    from helpers import peaky_model

    model = peaky_model(stage, ModelConfig(**{**CONFIG.to_dict(), "n_kv_head": 2}), seed=1)
    prompt = ids(B=2, T=5)
    uncached = generate(model, prompt, 40, temperature=0, use_cache=False)
    for fast in (True, False):
        refilled = generate(model, prompt, 40, temperature=0, slide=False, fast=fast)
        assert torch.equal(refilled, uncached)
        slid = generate(model, prompt, 40, temperature=0, fast=fast)
        assert torch.equal(slid[:, :CONFIG.block_size + 1], uncached[:, :CONFIG.block_size + 1])
