"""Every fast path runs in these tests, on any CPU: oneDNN's products, the sigmoid-form
GELU and the decoding copies are taken only where they pay (`stagegpt.fast.cpu`), so here
all are forced on; `test_onednn.py` and `test_activation.py` check the choice by CPU."""

import pytest

from stagegpt.fast import activation, decode, onednn


@pytest.fixture(autouse=True)
def every_fast_path(monkeypatch):
    monkeypatch.setattr(onednn, "PREFERRED", True)
    monkeypatch.setattr(decode, "COPIES", True)
    monkeypatch.setattr(activation, "PREFERRED", True)
