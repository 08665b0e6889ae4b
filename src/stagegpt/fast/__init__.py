"""Speed beside the plain model: it changes how a model computes, never what.

    accelerate(model)   a `FastModel`: oneDNN products, the chunked head + loss (training)
    FastDecoder         decoding steps with weight copies and a lean cached step

`Trainer`, `generate`, the ladder and the bench use them by default (`fast=False` in
Python, `--no-fast` on the command line turn them off); `tests/fast` proves each equal to
the plain model.
"""

from stagegpt.fast.decode import FastDecoder
from stagegpt.fast.model import FastModel, accelerate

__all__ = ["FastDecoder", "FastModel", "accelerate"]
