"""Every fast path runs in these tests, on any CPU: oneDNN is taken where it pays (AMD's
CPUs), so here it is forced on; `test_onednn.py` checks the choice by CPU itself."""

import pytest

from stagegpt.fast import onednn


@pytest.fixture(autouse=True)
def onednn_preferred(monkeypatch):
    monkeypatch.setattr(onednn, "PREFERRED", True)
