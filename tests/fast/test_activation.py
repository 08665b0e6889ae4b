"""The sigmoid-form tanh GELU equals PyTorch's own, forward and backward, and stands in
for every tanh GELU of an accelerated model only while it is accelerated."""

import pytest
import torch
import torch.nn.functional as F

from stagegpt import ModelConfig, build_model
from stagegpt.fast import accelerate, activation
from stagegpt.fast.activation import SigmoidGELU

# Every fp32 activation a model meets, densely, and a few far out where both forms saturate.
X = torch.cat([torch.linspace(-12, 12, 20_001), torch.tensor([0.0, 1e-7, -1e-7, -40.0, 40.0])])


def value_and_gradient(fn, x, upstream):
    leaf = x.clone().requires_grad_()
    y = fn(leaf)
    y.backward(upstream)
    return y.detach(), leaf.grad


def tanh_gelu(x):
    return F.gelu(x, approximate="tanh")


def test_values_and_gradients_equal_the_tanh_gelu_in_float64():
    """Against PyTorch's tanh GELU in float64, within fp32 rounding: the plain fp32 kernel
    itself is off by up to 4e-7 (values) and 1e-6 (gradients) here."""
    upstream = torch.randn(X.shape, generator=torch.Generator().manual_seed(0)).double()
    y64, grad64 = value_and_gradient(tanh_gelu, X.double(), upstream)
    y, grad = value_and_gradient(SigmoidGELU(), X, upstream.float())
    assert y.dtype == grad.dtype == torch.float32
    torch.testing.assert_close(y.double(), y64, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad.double(), grad64, rtol=1e-5, atol=1e-5)
    assert (y[X < -10] <= 0).all() and (y[X < -10] > -1e-10).all()  # -> 0 from below


def test_on_a_model_shaped_input_it_equals_the_plain_fp32_gelu():
    x = torch.randn(4, 16, 64, generator=torch.Generator().manual_seed(1)) * 3
    upstream = torch.randn(4, 16, 64, generator=torch.Generator().manual_seed(2))
    y, grad = value_and_gradient(tanh_gelu, x, upstream)
    y_fast, grad_fast = value_and_gradient(SigmoidGELU(), x, upstream)
    torch.testing.assert_close(y_fast, y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_fast, grad, rtol=1e-5, atol=1e-5)


def test_other_dtypes_take_the_plain_kernel():
    x = torch.randn(100).bfloat16()
    assert torch.equal(SigmoidGELU()(x), F.gelu(x, approximate="tanh"))
    x64 = torch.randn(100, dtype=torch.float64)
    assert torch.equal(SigmoidGELU()(x64), F.gelu(x64, approximate="tanh"))


def test_accelerate_swaps_every_tanh_gelu_and_close_puts_them_back():
    """Stage 2's GELU sits on the embeddings, stage 5's in every MLP; a hook on one still fires."""
    config = ModelConfig(vocab_size=50, block_size=8, n_embd=16, n_layer=2, n_head=2)
    seen = []
    for stage in (2, 5):
        seen.clear()
        model = build_model(stage, config)
        gelus = [name for name, m in model.named_modules() if isinstance(m, torch.nn.GELU)]
        assert gelus
        first = model.get_submodule(gelus[0])
        handle = first.register_forward_hook(lambda m, i, o: seen.append(type(m)))
        idx = torch.randint(0, 50, (2, 8))
        want = model(idx)[0]
        with accelerate(model) as fast:
            assert all(type(model.get_submodule(n)) is SigmoidGELU for n in gelus)
            torch.testing.assert_close(fast(idx)[0], want, rtol=1e-5, atol=1e-6)
        assert all(type(model.get_submodule(n)) is torch.nn.GELU for n in gelus)
        assert seen == [torch.nn.GELU, SigmoidGELU]  # the plain call, then the fast one
        handle.remove()


@pytest.mark.parametrize("capability, used", [("AVX2", True), ("AVX512", False),
                                              ("DEFAULT", False)])
def test_used_where_tanh_is_slow(capability, used, monkeypatch):
    monkeypatch.setattr(activation, "PREFERRED", None)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert activation.replaces(torch.nn.GELU(approximate="tanh")) is used
    assert not activation.replaces(torch.nn.GELU())  # the exact (erf) GELU is another function
