"""stagegpt: a GPT-style decoder built from scratch in five trainable stages."""

from stagegpt.config import PRESETS, ModelConfig, TrainConfig
from stagegpt.errors import StagegptError
from stagegpt.generate import generate
from stagegpt.models import GPT, STAGES, LanguageModel, build_model

__version__ = "0.1.0"

__all__ = [
    "GPT", "PRESETS", "STAGES", "LanguageModel", "ModelConfig", "StagegptError", "TrainConfig",
    "Trainer", "build_model", "generate", "load_checkpoint", "__version__",
]


def __getattr__(name: str):
    # Imported on first use: they pull in safetensors, matplotlib and tqdm.
    if name == "Trainer":
        from stagegpt.train import Trainer

        return Trainer
    if name == "load_checkpoint":
        from stagegpt.checkpoint import load_checkpoint

        return load_checkpoint
    raise AttributeError(f"module 'stagegpt' has no attribute {name!r}")
