import pytest
import torch
import torch.nn.functional as F

from stagegpt.fast import cpu, loss, onednn
from stagegpt.fast.loss import chunked_cross_entropy


def _problem(with_bias: bool, N: int = 50, C: int = 24, V: int = 301, scale: float = 0.3):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(N, C, generator=g, requires_grad=True)
    weight = (torch.randn(V, C, generator=g) * scale).requires_grad_()
    bias = torch.randn(V, generator=g).requires_grad_() if with_bias else None
    targets = torch.randint(0, V, (N,), generator=g)
    return hidden, weight, bias, targets


@pytest.mark.parametrize("preferred", [True, False], ids=["onednn", "mkl"])
@pytest.mark.parametrize("vocab_block", [64, 512], ids=["blocks", "one-block"])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize(("rows", "group"), [(1, None), (7, None), (7, 14), (7, 20), (64, None),
                                             (1000, None), (3, 3)])
def test_chunked_loss_and_gradients_equal_plain_path(with_bias, rows, group, preferred,
                                                     vocab_block, monkeypatch):
    """Through oneDNN's products and through MKL's (PyTorch's default), MKL's logits in
    column blocks (64 of the 301: four whole, one ragged) or in one."""
    monkeypatch.setattr(onednn, "PREFERRED", preferred)
    monkeypatch.setattr(loss, "VOCAB_BLOCK", vocab_block)
    hidden, weight, bias, targets = _problem(with_bias)
    plain = F.cross_entropy(F.linear(hidden, weight, bias), targets)
    inputs = [hidden, weight] + ([bias] if with_bias else [])
    plain_grads = torch.autograd.grad(plain * 2.5, inputs)  # a non-unit upstream gradient

    fused = chunked_cross_entropy(hidden, weight, bias, targets, rows=rows, group=group)
    fused_grads = torch.autograd.grad(fused * 2.5, inputs)
    assert torch.allclose(fused, plain, atol=1e-5)
    for got, want in zip(fused_grads, plain_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-5)


def test_confidently_wrong_rows_keep_an_exact_loss():
    """Target probabilities that underflow fp32 (loss > ~69 nats) are recomputed exactly."""
    hidden, weight, bias, targets = _problem(True, scale=40.0)
    plain = F.cross_entropy(F.linear(hidden, weight, bias), targets, reduction="none")
    assert plain.max() > 200  # the case under test really occurs
    fused = chunked_cross_entropy(hidden, weight, bias, targets, rows=8)
    assert torch.allclose(fused, plain.mean(), rtol=1e-5)
    grads = torch.autograd.grad(fused, [hidden, weight, bias])
    want = torch.autograd.grad(plain.mean(), [hidden, weight, bias])
    for got, ref in zip(grads, want, strict=True):  # logits ~1,000: relative to the scale
        assert torch.allclose(got, ref, atol=1e-5 * ref.abs().max().item())


def test_bf16_autocast_stays_close_to_fp32():
    hidden, weight, bias, targets = _problem(False, N=64, C=32, V=500)
    plain = F.cross_entropy(F.linear(hidden, weight), targets)
    plain_grads = torch.autograd.grad(plain, [hidden, weight])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = chunked_cross_entropy(hidden, weight, None, targets, rows=16, group=32)
    grads = torch.autograd.grad(fused, [hidden, weight])
    assert fused.dtype == torch.float32
    assert abs(fused.item() - plain.item()) < 0.02 * plain.item()
    for got, want in zip(grads, plain_grads, strict=True):
        assert got.dtype == torch.float32
        assert torch.allclose(got, want, atol=0.05 * want.abs().max().item())


def test_no_grad_path_skips_gradients():
    hidden, weight = torch.randn(10, 8), torch.randn(20, 8)
    targets = torch.randint(0, 20, (10,))
    loss = chunked_cross_entropy(hidden, weight, None, targets, rows=3)
    assert torch.allclose(loss, F.cross_entropy(hidden @ weight.t(), targets), atol=1e-6)


def test_under_no_grad_parameters_get_no_graph():
    hidden, weight, bias, targets = _problem(True)
    with torch.no_grad():
        loss = chunked_cross_entropy(hidden, weight, bias, targets, rows=7)
    assert loss.grad_fn is None
    want = F.cross_entropy(F.linear(hidden, weight, bias), targets)
    assert torch.allclose(loss, want, atol=1e-5)


@pytest.mark.parametrize("with_bias", [True, False])
def test_logits_in_column_blocks_equal_one_product(with_bias, monkeypatch):
    """Each block writes its own columns of the chunk in place, the ragged last one too."""
    hidden, weight, bias, _ = _problem(with_bias)
    monkeypatch.setattr(loss, "VOCAB_BLOCK", 64)
    out = torch.full((hidden.size(0), weight.size(0)), float("nan"))
    with torch.no_grad():
        loss._logits_into(out, hidden, weight, bias)
        want = F.linear(hidden, weight, bias)
    assert torch.allclose(out, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("vendor", "forced", "expected"), [
    ("AuthenticAMD", None, True), ("GenuineIntel", None, False),
    ("GenuineIntel", True, True), ("AuthenticAMD", False, False)])
def test_column_blocks_are_chosen_on_amd_cpus(vendor, forced, expected, monkeypatch):
    monkeypatch.setattr(cpu, "amd_x86", lambda: vendor == "AuthenticAMD")
    monkeypatch.setattr(loss, "BLOCKS", forced)
    assert loss.blocks_pay() is expected
