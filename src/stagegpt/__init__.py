"""stagegpt: a GPT-style decoder built from scratch, one trainable stage at a time.

The public names below are imported on first use, so `import stagegpt.model` loads the
plain model alone (torch and nothing else of stagegpt but its error type).
"""

from importlib import import_module

from stagegpt.errors import StagegptError

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "GPT": "stagegpt.model",
    "LanguageModel": "stagegpt.model",
    "ModelConfig": "stagegpt.model",
    "PRESETS": "stagegpt.model",
    "STAGES": "stagegpt.model",
    "build_model": "stagegpt.model",
    "TrainConfig": "stagegpt.train.config",
    "Trainer": "stagegpt.train.trainer",
    "generate": "stagegpt.generation",
    "load_checkpoint": "stagegpt.interop",
}

__all__ = [*_EXPORTS, "StagegptError", "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'stagegpt' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
