"""Every fast path runs in these tests, on any CPU: oneDNN's products and the decoding
copies are taken only where they pay (`stagegpt.fast.cpu`), so here both are forced on;
`test_onednn.py` checks the choice by CPU itself."""

import pytest

from stagegpt.fast import decode, onednn


@pytest.fixture(autouse=True)
def every_fast_path(monkeypatch):
    monkeypatch.setattr(onednn, "PREFERRED", True)
    monkeypatch.setattr(decode, "COPIES", True)
