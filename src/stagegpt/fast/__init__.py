"""Speed beside the plain model: it changes how a model computes, never what.

    accelerate(model)   a `FastModel` (training): the chunked head + loss; oneDNN
                        products and a sigmoid-form tanh GELU where they pay
    FastDecoder         decoding steps with weight copies and a lean cached step
    configure_process() process-wide settings (the allocator); every `stagegpt` command
                        calls it, Python users call it once

`Trainer`, `generate`, the ladder and the bench use them by default (`fast=False` in
Python, `--no-fast` on the command line turn them off); `tests/fast` proves each equal to
the plain model.
"""

from stagegpt.fast.decode import FastDecoder
from stagegpt.fast.model import FastModel, accelerate
from stagegpt.fast.process import configure_process

__all__ = ["FastDecoder", "FastModel", "accelerate", "configure_process"]
