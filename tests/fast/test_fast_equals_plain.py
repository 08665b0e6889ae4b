"""Fast equals plain: `stagegpt.fast` changes how a model computes, never what.

For every stage, the accelerated model (`accelerate`) and the plain one agree on the
logits, the loss, every parameter's gradient and one AdamW step, in fp32 and under bf16
autocast; `FastDecoder` agrees with the plain decoding path on every hidden state and
every token (prefill, cached steps and past block_size). The shapes are chosen so that
every fast path really runs (oneDNN products, `_Linear`'s backward, the chunked head +
loss), and the tests check that it did.

Tolerances: fp32 logits and gradients 1e-4 relative / 1e-5 absolute (the same products
summed in another order); the fp32 loss 1e-5; parameters after one AdamW step 1% of lr.
Under bf16 autocast both sides round to bf16 in different places: the loss within 1e-2,
gradients within 2e-2 relative of their norm.
"""

import pytest
import torch
from helpers import last_step_both_ways, peaky_model

from stagegpt import ModelConfig, build_model, generate
from stagegpt.fast import FastDecoder, accelerate, decode, onednn
from stagegpt.fast import loss as fast_loss
from stagegpt.fast.decode import ColumnBlocks
from stagegpt.fast.linear import OneDNNLinear
from stagegpt.generation.decoding import PlainDecoder
from stagegpt.train.optim import param_groups

STAGES = list(range(1, 10))
# 16 x 32 = 512 rows: every product goes through oneDNN, c_fc (512 x 192 x 768 multiply-adds)
# through `_Linear`, and the 512 x 9,000 logits through the chunked head + loss.
CONFIG = ModelConfig(vocab_size=9_000, block_size=32, n_embd=192, n_layer=2, n_head=4)
BATCH = 16
LR = 1e-3  # AdamW's first step moves every parameter by about lr: eps 1e-6 keeps gradients
# of 1e-7 (tokens absent from the batch) from turning rounding noise into lr-sized moves


@pytest.fixture
def calls(monkeypatch):
    """How often each fast path ran."""
    counts = {"onednn": 0, "chunked": 0, "large": 0}

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(onednn, "matmul_nt", counting("onednn", onednn.matmul_nt))
    monkeypatch.setattr(fast_loss.LinearCrossEntropy, "apply",
                        counting("chunked", fast_loss.LinearCrossEntropy.apply))
    monkeypatch.setattr(onednn._Linear, "apply", counting("large", onednn._Linear.apply))
    return counts


def batch(seed=0, config=CONFIG, B=BATCH):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, config.vocab_size, (B, config.block_size), generator=g)
    return x, torch.randint(0, config.vocab_size, (B, config.block_size), generator=g)


def twins(stage, config=CONFIG):
    """A plain model and an independent copy of it, the copy accelerated."""
    torch.manual_seed(stage)
    plain = build_model(stage, config)
    other = build_model(stage, config)
    other.load_state_dict(plain.state_dict())
    return plain, other, accelerate(other)


def autocast(dtype):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")


@pytest.mark.parametrize("stage", STAGES)
def test_logits_loss_gradients_and_a_step_agree_in_fp32(stage, calls):
    plain, other, fast = twins(stage)
    x, y = batch()
    logits, loss = plain(x, y)
    fast_logits, _ = fast(x)
    torch.testing.assert_close(fast_logits, logits, rtol=1e-4, atol=1e-5)
    fast_loss_value = fast.loss(x, y)
    torch.testing.assert_close(fast_loss_value, loss, rtol=0, atol=1e-5)
    loss.backward()
    fast_loss_value.backward()
    named = dict(other.named_parameters())
    for name, p in plain.named_parameters():
        torch.testing.assert_close(named[name].grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)
    for model in (plain, other):
        torch.optim.AdamW(param_groups(model, 0.1), lr=LR, eps=1e-6).step()
    for name, p in plain.named_parameters():  # within 1% of the step's size, lr
        torch.testing.assert_close(named[name], p, rtol=0, atol=0.01 * LR, msg=name)
    assert calls["chunked"] >= 1 and calls["onednn"] >= 1
    assert calls["large"] >= (1 if stage >= 4 else 0)  # the MLP's c_fc


def test_a_plain_training_loop_gets_the_fast_loss(calls):
    """`_, loss = fast(x, y)`, the call a loop written for the plain model makes, computes
    the loss without the logits; they come when asked for, and ignored targets (-100, as a
    fine-tune's masked prompt) take the plain loss, which skips them."""
    plain, _, fast = twins(5)
    x, y = batch()
    logits, loss = fast(x, y)
    assert logits is None and calls["chunked"] == 1
    torch.testing.assert_close(loss, plain(x, y)[1], rtol=0, atol=1e-5)
    logits, loss = fast(x, y, return_logits=True)
    assert logits.shape == (*x.shape, CONFIG.vocab_size) and calls["chunked"] == 1
    y[:, :5] = -100
    _, masked = fast(x, y)
    torch.testing.assert_close(masked, plain(x, y)[1], rtol=0, atol=1e-5)
    assert calls["chunked"] == 1


@pytest.mark.parametrize("stage", STAGES)
def test_loss_and_gradients_agree_under_bf16_autocast(stage, calls):
    plain, other, fast = twins(stage)
    x, y = batch()
    with autocast("bfloat16"):
        loss = plain.loss(x, y)
        fast_loss_value = fast.loss(x, y)
    torch.testing.assert_close(fast_loss_value, loss, rtol=0, atol=1e-2)
    loss.backward()
    fast_loss_value.backward()
    named = dict(other.named_parameters())
    for name, p in plain.named_parameters():
        error = (named[name].grad - p.grad).norm() / p.grad.norm().clamp_min(1e-12)
        assert error < 2e-2, name
    assert calls["chunked"] >= 1


def test_the_fast_model_is_the_plain_model(calls):
    """The same parameter objects and state_dict keys; `close()` puts the layers back."""
    torch.manual_seed(0)
    model = build_model(5, CONFIG)
    params = {name: id(p) for name, p in model.named_parameters()}
    keys = list(model.state_dict())
    with accelerate(model) as fast:
        assert isinstance(model.h[0].attn.c_attn, OneDNNLinear)
        assert {name: id(p) for name, p in model.named_parameters()} == params
        assert list(fast.state_dict()) == keys == list(model.state_dict())
        assert model.lm_head.weight is model.wte.weight  # still tied
    assert all(type(m) is torch.nn.Linear for m in model.modules()
               if isinstance(m, torch.nn.Linear))
    assert {name: id(p) for name, p in model.named_parameters()} == params


def test_hooks_on_a_swapped_layer_still_fire():
    torch.manual_seed(0)
    model = build_model(5, CONFIG)
    seen = []
    handle = model.h[0].mlp.c_fc.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with accelerate(model) as fast:
        fast(batch(B=2)[0])
    handle.remove()
    model(batch(B=2)[0])
    assert seen == [(2, CONFIG.block_size, 4 * CONFIG.n_embd)]


# --- decoding ------------------------------------------------------------------------------

DECODE = ModelConfig(vocab_size=97, block_size=16, n_embd=32, n_layer=2, n_head=2)


def peaky(stage):
    return peaky_model(stage, DECODE, seed=stage)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("out", [12, 13])
@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("piece", [2, 1024])
def test_column_blocks_equal_the_linear_layer(bias, out, k, rows, piece, monkeypatch):
    """One block of output columns per thread, the last padded with zero columns where
    k does not divide the width (the head: 50,257 columns): the layer's own product.
    Each block's weight is transposed `piece` rows at a time."""
    monkeypatch.setattr(decode, "TRANSPOSE_ROWS", piece)
    torch.manual_seed(out * k)
    layer = torch.nn.Linear(10, out, bias=bias)
    x = torch.randn(rows, 10)
    blocks = ColumnBlocks(layer, k)
    torch.testing.assert_close(blocks(x), layer(x), rtol=1e-5, atol=1e-6)
    columns = blocks.weight.permute(1, 0, 2).reshape(10, -1)  # (in, k * width)
    assert not columns[:, out:].any()  # the padding columns are zeros


@pytest.mark.parametrize("preferred", [True, False], ids=["onednn", "mkl"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("stage", STAGES)
def test_fast_decoder_steps_equal_the_plain_ones(stage, threads, preferred, monkeypatch):
    """Prefill, every cached step and the head, hidden state for hidden state (the copies
    are made for >= 32 steps: the head goes through oneDNN at 2 threads where oneDNN is
    preferred, else through a transposed copy)."""
    monkeypatch.setattr(onednn, "PREFERRED", preferred)
    model = peaky(stage)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    idx = torch.randint(0, DECODE.vocab_size, (2, DECODE.block_size))
    try:
        with torch.inference_mode():
            fast, plain = FastDecoder(model, 64), PlainDecoder(model)
            assert bool(fast.products) == (stage >= 3)
            assert fast.head_mode == ("onednn" if threads > 1 and preferred else "blocks")
            caches = [model.make_kv_cache(2), model.make_kv_cache(2)]
            for decoder, cache in zip((fast, plain), caches, strict=True):
                decoder.prefill(idx[:, :4], cache)
            for pos in range(4, DECODE.block_size):
                a = fast.step(idx[:, pos:pos + 1], caches[0], pos)
                b = plain.step(idx[:, pos:pos + 1], caches[1], pos)
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
                torch.testing.assert_close(fast.head(a), plain.head(b), rtol=1e-5, atol=1e-3)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("T, n", [(3, 40), (16, 8), (5, 60)],
                         ids=["cached", "full-prompt", "past-block-size"])
def test_generation_fast_equals_plain(stage, dtype, T, n):
    """Greedy and seeded sampling give the same tokens through either path."""
    model = peaky(stage)
    idx = torch.randint(0, DECODE.vocab_size, (2, T), generator=torch.Generator().manual_seed(T))
    for kwargs in (dict(temperature=0), dict(temperature=0.8, top_k=20, seed=7),
                   dict(temperature=1.0, top_p=0.9, seed=3)):
        with autocast(dtype):
            fast = generate(model, idx, n, **kwargs)
            plain = generate(model, idx, n, fast=False, **kwargs)
        assert torch.equal(fast, plain), kwargs


def test_a_weight_change_mid_stream_sends_the_decoder_back_to_the_plain_path():
    """A paused stream's copies would be stale after an update; the decoder notices."""
    model = peaky(5)
    idx = torch.randint(0, DECODE.vocab_size, (1, 3))
    decoder = FastDecoder(model, 64)
    assert decoder.products
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.0)
    got, want = last_step_both_ways(decoder, model, idx)
    assert not decoder.products and decoder.head_mode == "plain"
    torch.testing.assert_close(got, want)


def test_hooks_see_every_decoding_step_even_when_fast():
    """A model with hooks decodes plainly, so a hook sees the prefill and every step."""
    model = peaky(5)
    seen = []
    handle = model.h[1].attn.register_forward_hook(lambda m, i, o: seen.append(o.size(1)))
    generate(model, torch.zeros(1, 3, dtype=torch.long), 12, temperature=0)
    handle.remove()
    assert seen == [3] + [1] * 11  # the prompt, then one new token per step

