"""Every fast path runs in these tests, on any CPU: oneDNN's products, the sigmoid-form
GELU, the decoding copies and the logits in column blocks are taken only where they pay
(`stagegpt.fast.cpu`), so here all are forced on; `test_onednn.py`, `test_activation.py`
and `test_loss.py` check the choice by CPU."""

import pytest

from stagegpt.fast import activation, decode, loss, onednn


@pytest.fixture(autouse=True)
def every_fast_path(monkeypatch):
    monkeypatch.setattr(onednn, "PREFERRED", True)
    monkeypatch.setattr(decode, "COPIES", True)
    monkeypatch.setattr(activation, "PREFERRED", True)
    monkeypatch.setattr(loss, "BLOCKS", True)
