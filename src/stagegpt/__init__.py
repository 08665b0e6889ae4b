"""stagegpt: a GPT-style decoder built from scratch in five trainable stages."""

from stagegpt.config import PRESETS, ModelConfig, TrainConfig
from stagegpt.errors import StagegptError
from stagegpt.generate import generate
from stagegpt.models import GPT, STAGES, LanguageModel, build_model

__version__ = "0.1.0"

__all__ = [
    "GPT", "PRESETS", "STAGES", "LanguageModel", "ModelConfig", "StagegptError", "TrainConfig",
    "build_model", "generate", "__version__",
]
