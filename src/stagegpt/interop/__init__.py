"""Models in and out of other formats: Hugging Face GPT-2 directories (`gpt2`), and the one
loader that reads a stagegpt checkpoint, a run dir or a Hugging Face dir alike."""

from stagegpt.interop.loading import load_checkpoint

__all__ = ["load_checkpoint"]
