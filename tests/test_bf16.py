"""The bf16 training path (TrainConfig(dtype="bfloat16"): matmuls under torch.autocast)
against fp32 on a short run: same data, same seed, loss curves that agree."""

import pytest
import torch

from stagegpt.model.config import ModelConfig
from stagegpt.train.config import TrainConfig
from stagegpt.train.trainer import Trainer

STEPS = 30


@pytest.fixture(scope="module")
def markov(markov_data):
    return markov_data(order=1, vocab=16, tokens=20_000, seed=5)


def run(data, out, dtype):
    model = ModelConfig(block_size=16, n_embd=32, n_layer=2, n_head=2)
    train = TrainConfig(max_steps=STEPS, batch_size=8, lr=3e-3, warmup_steps=5,
                        eval_every=STEPS, eval_batches=4, ckpt_every=STEPS, dtype=dtype)
    trainer = Trainer(5, model, train, data, out, progress=False)
    result = trainer.fit()
    return trainer, result, [row["train_loss"] for row in trainer.rows]


def test_bf16_loss_curve_follows_fp32(markov, tmp_path):
    _, fp32, fp32_curve = run(markov, tmp_path / "fp32", "float32")
    trainer, bf16, bf16_curve = run(markov, tmp_path / "bf16", "bfloat16")
    assert len(bf16_curve) == len(fp32_curve) == STEPS
    assert bf16_curve[0] == pytest.approx(fp32_curve[0], rel=0.01)  # same init, same batch
    assert bf16_curve[-1] < 0.8 * bf16_curve[0]  # it learns
    assert bf16_curve != fp32_curve  # bf16 really ran: not bit-identical ...
    for a, b in zip(bf16_curve, fp32_curve, strict=True):
        assert a == pytest.approx(b, abs=0.02)  # ... but within 0.02 nats at every step
    assert bf16.val_loss == pytest.approx(fp32.val_loss, rel=0.01)
    # autocast computes in bf16 but the weights (and the checkpoint) stay fp32
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_native_products_says_so_once(native, markov, tmp_path,
                                                             monkeypatch, capsys):
    """Emulated bf16 products are slow: training and loading in bf16 each say what it costs
    them (once per process), and only where it is true."""
    from stagegpt.fast import cpu
    from stagegpt.interop import load_checkpoint

    monkeypatch.setattr(cpu, "native_bf16", lambda: native)
    cpu.note_slow_bf16.cache_clear()
    try:
        run(markov, tmp_path / "bf16", "bfloat16")
        load_checkpoint(tmp_path / "bf16", dtype="bfloat16")
        load_checkpoint(tmp_path / "bf16", dtype="float32")
    finally:
        cpu.note_slow_bf16.cache_clear()
    err = capsys.readouterr().err
    assert err.count("no native bf16 matrix products") == (0 if native else 2)
    assert err.count("bf16 training step runs about 50 times slower") == (0 if native else 1)
    assert err.count("a whole forward pass (eval) runs about 5") == (0 if native else 1)
    assert not cpu.bf16_is_slow("meta") and cpu.bf16_is_slow("cpu") is (not native)
