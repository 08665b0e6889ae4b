import pytest
import torch
import torch.nn.functional as F

from stagegpt.loss import chunked_cross_entropy


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("rows", [1, 7, 64, 1000])
def test_chunked_loss_and_gradients_equal_plain_path(with_bias, rows):
    g = torch.Generator().manual_seed(0)
    N, C, V = 50, 24, 301
    hidden = torch.randn(N, C, generator=g, requires_grad=True)
    weight = (torch.randn(V, C, generator=g) * 0.3).requires_grad_()
    bias = torch.randn(V, generator=g).requires_grad_() if with_bias else None
    targets = torch.randint(0, V, (N,), generator=g)

    plain = F.cross_entropy(F.linear(hidden, weight, bias), targets)
    inputs = [hidden, weight] + ([bias] if with_bias else [])
    plain_grads = torch.autograd.grad(plain * 2.5, inputs)  # a non-unit upstream gradient

    fused = chunked_cross_entropy(hidden, weight, bias, targets, rows=rows)
    fused_grads = torch.autograd.grad(fused * 2.5, inputs)
    assert torch.allclose(fused, plain, atol=1e-5)
    for got, want in zip(fused_grads, plain_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-5)


def test_no_grad_path_skips_gradients():
    hidden, weight = torch.randn(10, 8), torch.randn(20, 8)
    targets = torch.randint(0, 20, (10,))
    with torch.no_grad():
        loss = chunked_cross_entropy(hidden, weight, None, targets, rows=3)
    assert torch.allclose(loss, F.cross_entropy(hidden @ weight.t(), targets), atol=1e-6)
