"""Fine-tuned checkpoints on disk, and loading one back for inference.

A fine-tuned checkpoint dir (each OUT/step_N, OUT/best, and a `merge` output) holds

    config.json            the base's stage, model config and tokenizer, plus "finetune":
                           task, train mode, labels (classify), template (instruct), and
                           the base it started from ("base": path and sha256 of its weights;
                           a resume must name the same base)
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

from stagegpt.data.finetune_records import check_labels
from stagegpt.errors import StagegptError
from stagegpt.fileio import (
    atomic_dir,
    check_replaceable,
    check_swappable,
    read_json,
    write_json,
)
from stagegpt.finetune.classify import Classifier
from stagegpt.finetune.lora import (
    LoRAConfig,
    adapter_state,
    attach_lora,
    load_adapter_state,
    merge_lora,
    unmatched_targets,
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
from stagegpt.train.rundir import STEP_DIR, resolve_checkpoint_dir, run_exists
from stagegpt.values import check_switch

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


def read_labels(directory: Path, info: dict) -> list[str]:
    """A classifier's labels from its config.json, checked before a head is built."""
    try:
        return check_labels(info.get("labels"), str(directory / CONFIG_FILE))
    except StagegptError as err:
        raise StagegptError(f"{err}; the checkpoint is damaged: restore it or fine-tune "
                            "again") from None


def read_head(directory: Path, lm: LanguageModel, labels: list[str]) -> nn.Linear:
    """The head, its shape (one row per label) checked against the labels."""
    path = directory / HEAD_FILE
    weights = read_weights(path)
    rows = weights.get("weight")
    if rows is not None and rows.dim() == 2 and rows.shape[0] != len(labels):
        raise StagegptError(f"{path} scores {rows.shape[0]} labels, but {CONFIG_FILE} names "
                            f"{len(labels)}; the checkpoint is damaged: restore it or "
                            "fine-tune again")
    head = nn.Linear(lm.config.n_embd, len(labels))
    load_weights_into(head, weights, path)
    return head


def read_lora(directory: Path, info: dict) -> LoRAConfig | None:
    """lora.json's settings, or None for a run without LoRA or a merged copy of one; a
    LoRA run (by its config's train mode, or its adapters) without them is incomplete."""
    path = directory / LORA_FILE
    if not path.is_file():
        unmerged_lora = info.get("train") == "lora" and "merged_from" not in info
        if unmerged_lora or (directory / ADAPTERS_FILE).exists():
            raise StagegptError(f"{directory} is incomplete: {LORA_FILE}, the settings of its "
                                "LoRA adapters, is missing; restore it or fine-tune again")
        return None
    try:
        return LoRAConfig.from_dict(read_json(path, "LoRA settings"))
    except StagegptError as err:
        raise StagegptError(f"{path} is damaged ({err}); fine-tune again or restore it") from None


def attach_saved_lora(lm: LanguageModel, directory: Path, lora: LoRAConfig) -> None:
    """Attach the adapters saved in `directory`; a target the model lacks names the file."""
    unmatched = unmatched_targets(lm, lora.targets)
    if unmatched:
        raise StagegptError(f"{directory / LORA_FILE}: its targets name {unmatched[0]!r:.40}, "
                            "a layer this model does not have; the file is damaged or belongs "
                            "to another base")
    attach_lora(lm, lora)
    load_adapter_state(lm, read_weights(directory / ADAPTERS_FILE),
                       str(directory / ADAPTERS_FILE))


def load_finetuned(path: str | Path, merge: bool = True) -> Finetuned:
    """A fine-tuned checkpoint for inference; merge=False keeps the LoRA layers apart."""
    directory, meta, info = read_config(path)
    labels = read_labels(directory, info) if info["task"] == "classify" else None
    lora = read_lora(directory, info)
    lm = load_base(directory, meta, info)
    if lora is not None:
        attach_saved_lora(lm, directory, lora)
        if merge:
            try:
                merge_lora(lm)
            except StagegptError as err:
                raise StagegptError(f"{directory}: {err}; {LORA_FILE} or {ADAPTERS_FILE} is "
                                    "damaged: use an earlier checkpoint") from None
    head = None if labels is None else read_head(directory, lm, labels).eval()
    from stagegpt.data.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(meta["tokenizer"], directory)
    return Finetuned(directory, lm.eval(), tokenizer, info, head, lora)


def _run_and_checkpoint(checkpoint: Path) -> list[Path]:
    """`checkpoint`, and the run dir holding it if it is one's step or best checkpoint."""
    checkpoint = checkpoint.resolve()
    parent = checkpoint.parent
    if STEP_DIR.match(checkpoint.name) and parent.name == "checkpoints":
        return [checkpoint, parent.parent]
    if checkpoint.name == "best" and run_exists(parent):
        return [checkpoint, parent]
    return [checkpoint]


def _is_checkpoint(directory: Path) -> bool:
    if not (directory / CONFIG_FILE).is_file():
        return False
    try:
        meta = read_json(directory / CONFIG_FILE, "checkpoint config")
    except StagegptError:
        return False
    return isinstance(meta, dict) and "stage" in meta and isinstance(meta.get("model"), dict)


def check_merge_out(out: Path, overwrite: bool, read_from: list[Path]) -> None:
    """Refuse an `out` a merge would destroy data in: one that is, holds or lies in a dir
    it reads (the source run and checkpoint, their base), or with `overwrite` a directory
    that is not a checkpoint."""
    check_swappable(out)
    target = out.resolve()
    for source in sorted(read_from, key=lambda d: (d != target, -len(d.parts))):  # nearest first
        if target.is_relative_to(source) or source.is_relative_to(target):
            relation = ("is" if target == source else
                        "lies inside" if target.is_relative_to(source) else "holds")
            raise StagegptError(f"out {out} {relation} {source}, which the merge reads; choose "
                                "a path outside it", "out")
    if not (out.exists() or out.is_symlink()) or (out.is_dir() and not any(out.iterdir())):
        return
    if not overwrite:
        raise StagegptError(f"overwrite is off and {out} already exists; turn it on to "
                            "replace it, or choose a new path", "overwrite")
    if not out.is_dir() or not _is_checkpoint(out):
        raise StagegptError(f"out {out} is not a stagegpt checkpoint (it has no checkpoint "
                            f"{CONFIG_FILE}), and only a checkpoint is replaced; choose a new "
                            "path", "out")


def write_merged(source: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """`stagegpt merge`: a plain checkpoint (LoRA folded into the weights) that sample,
    convert and inspect read; a classifier keeps its head beside it. `out` may not be in
    or over what the merge reads, and `overwrite` replaces only a checkpoint."""
    check_switch(overwrite, "overwrite")  # before the load: "no" is true
    tuned = load_finetuned(source, merge=True)
    read_from = [Path(source).resolve(), *_run_and_checkpoint(tuned.path)]
    if not (tuned.path / WEIGHTS_FILE).is_file():  # load_finetuned read its base
        read_from += _run_and_checkpoint(Path(tuned.info["base"]["path"]))
    check_merge_out(Path(out), overwrite, read_from)
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
