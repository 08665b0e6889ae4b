"""The oneDNN fp32 path (`stagegpt.fast.onednn`) computes what F.linear computes."""

import pytest
import torch
import torch.nn.functional as F

from stagegpt import ModelConfig, build_model
from stagegpt.fast import accelerate, onednn
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
