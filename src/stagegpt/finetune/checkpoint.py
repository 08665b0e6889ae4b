"""Fine-tuned checkpoints on disk, and loading one back for inference.

A fine-tuned checkpoint dir (each OUT/step_N, OUT/best, and a `merge` output) holds

    config.json            the base's stage, model config and tokenizer, plus "finetune":
                           task, train mode, labels (classify), template (instruct), and
                           the base it started from ("base": path and sha256 of its weights)
    model.safetensors      the language model's weights, when they changed (--train
                           last-block|all) or were merged; absent for head-only and LoRA
                           runs, whose base is read from "base" (and checked by its sha256)
    adapters.safetensors   LoRA's A and B of each adapted layer, and lora.json (rank,
                           alpha, targets)
    head.safetensors       the classification head (classify)
    the tokenizer's files, and for training checkpoints trainer_state.json, optimizer.pt
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from stagegpt.errors import StagegptError
from stagegpt.fileio import atomic_dir, check_replaceable, read_json, write_json
from stagegpt.finetune.classify import Classifier
from stagegpt.finetune.lora import (
    LoRAConfig,
    adapter_state,
    attach_lora,
    load_adapter_state,
    merge_lora,
)
from stagegpt.finetune.templates import Template, template_for
from stagegpt.interop import load_checkpoint
from stagegpt.model import LanguageModel
from stagegpt.train.checkpoints import (
    CONFIG_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    load_weights_into,
    read_checkpoint,
    read_weights,
    unique_weights,
    write_safetensors,
    write_torch,
)
from stagegpt.train.rundir import resolve_checkpoint_dir

ADAPTERS_FILE = "adapters.safetensors"
LORA_FILE = "lora.json"
HEAD_FILE = "head.safetensors"


@dataclass
class Finetuned:
    """A fine-tuned model ready for inference (LoRA merged into the weights)."""

    path: Path
    lm: LanguageModel
    tokenizer: Any
    info: dict[str, Any]  # config.json's "finetune"
    head: nn.Linear | None  # classify only
    lora: LoRAConfig | None

    @property
    def classifier(self) -> Classifier:
        model = Classifier(self.lm, self.head.out_features)
        model.head = self.head
        return model.eval()

    @property
    def template(self) -> Template:
        return template_for(self.tokenizer)


def weights_sha256(directory: Path) -> str | None:
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_finetuned(directory: Path, lm: LanguageModel, tokenizer: Any, info: dict[str, Any],
                    head: nn.Linear | None = None, lora: LoRAConfig | None = None,
                    full_weights: bool = False, trainer_state: dict | None = None,
                    optimizer_state: dict | None = None, extra: dict | None = None,
                    overwrite: bool = True) -> Path:
    """Write a fine-tuned checkpoint to `directory` in one atomic step."""
    check_replaceable(directory, overwrite)
    from stagegpt import __version__

    config = {"stage": lm.stage, "model": lm.config.to_dict(), "tokenizer": tokenizer.to_spec(),
              "stagegpt_version": __version__, **(extra or {}), "finetune": info}
    with atomic_dir(directory) as tmp:
        write_json(tmp / CONFIG_FILE, config)
        tokenizer.save(tmp)
        if full_weights:
            weights = {k: v.cpu() for k, v in unique_weights(lm).items()}
            write_safetensors(weights, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        if lora is not None:
            write_json(tmp / LORA_FILE, lora.to_dict())
            write_safetensors({k: v.cpu() for k, v in adapter_state(lm).items()},
                              tmp / ADAPTERS_FILE)
        if head is not None:
            write_safetensors({k: v.detach().cpu().contiguous()
                               for k, v in head.state_dict().items()}, tmp / HEAD_FILE)
        if trainer_state is not None:
            write_json(tmp / STATE_FILE, trainer_state)
        if optimizer_state is not None:
            write_torch(optimizer_state, tmp / OPTIMIZER_FILE)
    return directory


def read_config(path: str | Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """The checkpoint dir `path` names (a run dir: its newest), its config and "finetune"."""
    directory = resolve_checkpoint_dir(path)
    meta = read_json(directory / CONFIG_FILE, "checkpoint config")
    info = meta.get("finetune") if isinstance(meta, dict) else None
    if not isinstance(info, dict) or info.get("task") not in ("classify", "instruct"):
        raise StagegptError(f"{directory} is not a fine-tuned checkpoint; make one with "
                            "stagegpt finetune")
    return directory, meta, info


def load_base(directory: Path, meta: dict, info: dict) -> LanguageModel:
    """The language model a checkpoint starts from: its own weights, or its base's."""
    if (directory / WEIGHTS_FILE).is_file():
        return read_checkpoint(directory, meta).model
    base = info.get("base")
    if not isinstance(base, dict) or not isinstance(base.get("path"), str):
        raise StagegptError(f"{directory} has neither {WEIGHTS_FILE} nor a base reference; "
                            "it is incomplete")
    base_dir = Path(base["path"])
    if not base_dir.is_dir():
        raise StagegptError(f"{directory} adapts the base checkpoint {base_dir}, which is gone; "
                            "restore it there (or run stagegpt merge while it exists)")
    if base.get("sha256") is not None and weights_sha256(base_dir) != base["sha256"]:
        raise StagegptError(f"the base checkpoint {base_dir} changed since {directory} was "
                            "fine-tuned from it (its weights' sha256 differs); the adapters "
                            "and head only fit the original base")
    lm = load_checkpoint(base_dir).model
    if lm.stage != meta.get("stage") or lm.config.to_dict() != meta.get("model"):
        raise StagegptError(f"the base {base_dir} is not the model {directory} was tuned from")
    return lm


def read_head(directory: Path, lm: LanguageModel, labels: list[str]) -> nn.Linear:
    head = nn.Linear(lm.config.n_embd, len(labels))
    load_weights_into(head, read_weights(directory / HEAD_FILE), directory / HEAD_FILE)
    return head


def read_lora(directory: Path) -> LoRAConfig | None:
    path = directory / LORA_FILE
    if not path.is_file():
        return None
    try:
        return LoRAConfig.from_dict(read_json(path, "LoRA settings"))
    except StagegptError as err:
        raise StagegptError(f"{path} is damaged ({err}); fine-tune again or restore it") from None


def load_finetuned(path: str | Path, merge: bool = True) -> Finetuned:
    """A fine-tuned checkpoint for inference; merge=False keeps the LoRA layers apart."""
    directory, meta, info = read_config(path)
    lm = load_base(directory, meta, info)
    lora = read_lora(directory)
    if lora is not None:
        attach_lora(lm, lora)
        load_adapter_state(lm, read_weights(directory / ADAPTERS_FILE),
                           str(directory / ADAPTERS_FILE))
        if merge:
            merge_lora(lm)
    head = None
    if info["task"] == "classify":
        labels = info.get("labels")
        if not isinstance(labels, list) or not labels:
            raise StagegptError(f"{directory / CONFIG_FILE}: a classifier without labels")
        head = read_head(directory, lm, labels).eval()
    from stagegpt.data.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(meta["tokenizer"], directory)
    return Finetuned(directory, lm.eval(), tokenizer, info, head, lora)


def write_merged(source: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """`stagegpt merge`: a plain checkpoint (LoRA folded into the weights) that sample,
    convert and inspect read; a classifier keeps its head beside it."""
    tuned = load_finetuned(source, merge=True)
    info = {k: v for k, v in tuned.info.items() if k != "base"}
    info["merged_from"] = str(tuned.path)
    lm = copy.deepcopy(tuned.lm)
    return write_finetuned(Path(out), lm, tuned.tokenizer, info, tuned.head,
                           full_weights=True, overwrite=overwrite)


def load_for_chat(path: str | Path) -> tuple[LanguageModel, Any]:
    """(model, tokenizer) to converse with: a fine-tuned instruct checkpoint (LoRA merged),
    or any plain checkpoint (the template then meets an untuned model)."""
    directory = resolve_checkpoint_dir(path)
    meta = read_json(directory / CONFIG_FILE, "checkpoint config")
    if isinstance(meta, dict) and isinstance(meta.get("finetune"), dict):
        tuned = load_finetuned(directory)
        if tuned.head is not None:
            raise StagegptError(f"{path} is a classifier; use stagegpt classify with it")
        return tuned.lm, tuned.tokenizer
    ckpt = load_checkpoint(directory)
    if ckpt.tokenizer is None:
        raise StagegptError(f"{path} has no tokenizer to encode a conversation with")
    return ckpt.model, ckpt.tokenizer
