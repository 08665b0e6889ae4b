"""Fine-tuning a pretrained stage: a classifier head, instruction tuning, LoRA adapters.

    from stagegpt.finetune import FinetuneSettings, LoRAConfig, finetune, load_finetuned
    finetune("runs/base", "data/genre", "runs/genre", FinetuneSettings("classify"))

The loop is the pretraining `Trainer`'s (finetune/trainer.py replaces its hooks only).
"""

from stagegpt.finetune.checkpoint import Finetuned, load_finetuned, write_merged
from stagegpt.finetune.lora import LoRAConfig, LoRALinear, attach_lora, merge_lora
from stagegpt.finetune.results import finetune
from stagegpt.finetune.trainer import FinetuneSettings, FinetuneTrainer

__all__ = ["FinetuneSettings", "FinetuneTrainer", "Finetuned", "LoRAConfig", "LoRALinear",
           "attach_lora", "finetune", "load_finetuned", "merge_lora", "write_merged"]
