"""Sampling from any stage: `generate` (all at once) and `stream` (token by token)."""

from stagegpt.generation.decoding import generate, stream
from stagegpt.generation.sampling import (
    check_sampling_args,
    nth_seed,
    sample_next,
    sampling_probs,
)

__all__ = ["check_sampling_args", "generate", "nth_seed", "sample_next", "sampling_probs",
           "stream"]
