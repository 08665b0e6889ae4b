"""The oneDNN fp32 path (`stagegpt.fast.onednn`) computes what F.linear computes."""

import pytest
import torch
import torch.nn.functional as F

from stagegpt import ModelConfig, build_model
from stagegpt.fast import accelerate, cpu, decode, onednn
from stagegpt.fast.loss import chunked_cross_entropy

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                  reason="this PyTorch build has no oneDNN")


@needs_onednn
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("own_backward", [True, False])
def test_linear_and_its_gradients_equal_f_linear(with_bias, own_backward, monkeypatch):
    monkeypatch.setattr(onednn, "LARGE_MACS", 0 if own_backward else 1 << 40)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 40, 24, generator=g, requires_grad=True)  # 120 rows >= MIN_ROWS
    w = torch.randn(36, 24, generator=g, requires_grad=True)
    b = torch.randn(36, generator=g, requires_grad=True) if with_bias else None
    assert onednn.applies(x, w)
    inputs = [x, w] + ([b] if with_bias else [])
    up = torch.randn(3, 40, 36, generator=g)
    want = F.linear(x, w, b)
    got = onednn.linear(x, w, b)
    assert got.shape == want.shape and not got.is_mkldnn
    assert torch.allclose(got, want, atol=1e-5)
    for a, c in zip(torch.autograd.grad(got, inputs, up), torch.autograd.grad(want, inputs, up),
                    strict=True):
        assert torch.allclose(a, c, atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(onednn.linear(x, w, b), want, atol=1e-5)


def test_small_inputs_other_dtypes_and_autocast_take_f_linear():
    w = torch.randn(8, 16)
    assert not onednn.applies(torch.randn(1, 16), w)  # one row: decoding
    assert not onednn.applies(torch.randn(100, 16).double(), w.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not onednn.applies(torch.randn(100, 16), w)


@needs_onednn
def test_model_and_fused_loss_agree_with_the_default_blas_path(monkeypatch):
    config = ModelConfig(vocab_size=300, block_size=32, n_embd=32, n_layer=2, n_head=2)
    torch.manual_seed(0)
    model = build_model(5, config)
    idx = torch.randint(0, 300, (4, 32))
    runs = []
    for enabled in (True, False):
        monkeypatch.setattr(onednn, "ENABLED", enabled)
        model.zero_grad(set_to_none=True)
        with accelerate(model) as fast:
            loss = fast.loss(idx, torch.roll(idx, -1, 1))
        loss.backward()
        runs.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = runs
    assert torch.allclose(loss_a, loss_b, atol=1e-5)
    for a, b in zip(grads_a, grads_b, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


@needs_onednn
@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_loss_on_the_onednn_path_equals_plain_path(with_bias):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(150, 24, generator=g, requires_grad=True)
    weight = (torch.randn(301, 24, generator=g) * 0.3).requires_grad_()
    bias = torch.randn(301, generator=g).requires_grad_() if with_bias else None
    targets = torch.randint(0, 301, (150,), generator=g)
    assert onednn.applies(hidden, weight)
    inputs = [hidden, weight] + ([bias] if with_bias else [])
    plain = F.cross_entropy(F.linear(hidden, weight, bias), targets)
    fused = chunked_cross_entropy(hidden, weight, bias, targets, rows=40, group=80)
    assert torch.allclose(fused, plain, atol=1e-5)
    for a, c in zip(torch.autograd.grad(fused, inputs), torch.autograd.grad(plain, inputs),
                    strict=True):
        assert torch.allclose(a, c, atol=1e-5)


@pytest.mark.parametrize("vendor, machine, capability, products, copies", [
    ("AuthenticAMD", "x86_64", "AVX512", True, True),  # Zen 4: MKL's AVX2 code is slower
    ("AuthenticAMD", "x86_64", "AVX2", False, True),  # Zen 3: MKL's products win
    ("GenuineIntel", "x86_64", "AVX512", False, False),
    ("", "aarch64", "DEFAULT", False, False), ("AuthenticAMD", "aarch64", "SVE256", False, False)])
def test_each_fast_path_is_taken_only_on_the_cpus_where_it_pays(
        vendor, machine, capability, products, copies, monkeypatch):
    monkeypatch.setattr(cpu, "vendor", lambda: vendor)
    monkeypatch.setattr(cpu.platform, "machine", lambda: machine)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(onednn, "PREFERRED", None)
    monkeypatch.setattr(decode, "COPIES", None)
    cpu.amd_x86.cache_clear()
    onednn.pays_on_this_cpu.cache_clear()
    try:
        assert onednn.pays_on_this_cpu() is products
        assert onednn.preferred() is (products and onednn.available())
        assert onednn.applies(torch.randn(100, 16), torch.randn(8, 16)) is onednn.preferred()
        assert decode.copies_pay() is copies
    finally:
        cpu.amd_x86.cache_clear()
        onednn.pays_on_this_cpu.cache_clear()


def test_cpu_facts_read_this_machine():
    assert isinstance(cpu.vendor(), str)
    assert isinstance(cpu.native_bf16(), bool)


def test_where_onednn_does_not_pay_the_fast_layer_keeps_plain_products(monkeypatch):
    """No oneDNN layers and no decoding copies; the chunked loss and the lean step still
    run and still equal the plain model."""
    from helpers import last_step_both_ways, peaky_model

    from stagegpt import generate
    from stagegpt.fast import FastDecoder

    monkeypatch.setattr(onednn, "PREFERRED", False)
    monkeypatch.setattr(decode, "COPIES", False)
    config = ModelConfig(vocab_size=9_000, block_size=32, n_embd=64, n_layer=2, n_head=2)
    torch.manual_seed(0)
    model = build_model(5, config)
    idx = torch.randint(0, 9_000, (8, 32))
    with accelerate(model) as fast:
        assert all(type(m) is torch.nn.Linear for m in model.modules()
                   if isinstance(m, torch.nn.Linear))
        torch.testing.assert_close(fast.loss(idx, idx), model.loss(idx, idx), rtol=0, atol=1e-5)
    small = ModelConfig(vocab_size=97, block_size=16, n_embd=32, n_layer=2, n_head=2)
    peaky = peaky_model(5, small, seed=5)
    decoder = FastDecoder(peaky, 64)
    assert not decoder.products and decoder.head_mode == "plain" and decoder.lean
    prompt = torch.randint(0, 97, (2, 4))
    got, want = last_step_both_ways(decoder, peaky, prompt)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(generate(peaky, prompt, 40, temperature=0),
                       generate(peaky, prompt, 40, temperature=0, fast=False))


def test_configure_process_keeps_freed_memory_where_glibc_allows():
    import platform

    from stagegpt.fast import configure_process

    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert configure_process() is expected
