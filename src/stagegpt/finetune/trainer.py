"""`FinetuneTrainer`: the pretraining `Trainer`'s loop, checkpoints, exact resume, progress
bar and metrics, on records of a fine-tuning data dir instead of a token stream.

What changes is only what the Trainer's hooks return: the module (a base model with some
parts frozen, LoRA attached, or a classifier head on top), the batches (records sampled
with the run's seeded data generator, right-padded), the loss (cross-entropy of the
labels, or of the reply tokens only) and what a checkpoint holds (finetune/checkpoint.py).
Batches are padded, not packed: one record per row, padding to the batch's longest record
(pad positions are never read by the head and never targets).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from stagegpt.data.finetune_records import read_finetune_dir, records_sha256
from stagegpt.errors import StagegptError
from stagegpt.fileio import read_json
from stagegpt.finetune.checkpoint import (
    ADAPTERS_FILE,
    HEAD_FILE,
    load_adapter_state,
    read_lora,
    weights_sha256,
    write_finetuned,
)
from stagegpt.finetune.classify import Classifier, pad_batch
from stagegpt.finetune.lora import LoRAConfig, attach_lora, check_targets
from stagegpt.finetune.templates import IGNORE, encode_dialog, loss_targets, template_for
from stagegpt.interop import load_checkpoint
from stagegpt.limits import check_fits
from stagegpt.model import LanguageModel, ModelConfig
from stagegpt.train.checkpoints import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_weights_into,
    read_weights,
    training_bytes,
)
from stagegpt.train.config import TrainConfig
from stagegpt.train.rundir import check_apart, resolve_checkpoint_dir, step_dirs
from stagegpt.train.trainer import Trainer
from stagegpt.values import check_switch

TASKS = ("classify", "instruct")
TRAIN_MODES = ("head", "last-block", "all")
RESUME_SETTINGS = ("task", "train", "labels", "template", "truncate")  # of config's "finetune"


@dataclass(frozen=True)
class FinetuneSettings:
    """task: classify | instruct. train: which of the base's weights learn - head (none:
    only the classifier head), last-block (the last block and the final norm), all;
    default head for classify, all for instruct. lora: adapters instead (the base frozen).
    truncate: cut classify texts longer than the context to their first block_size tokens
    instead of refusing them."""

    task: str
    train: str | None = None
    lora: LoRAConfig | None = None
    truncate: bool = False

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise StagegptError(f"task must be classify or instruct, got {self.task!r}", "task")
        if self.train is not None and self.train not in TRAIN_MODES:
            raise StagegptError(f"train must be one of {', '.join(TRAIN_MODES)}, got "
                                f"{self.train!r}", "train")
        if self.task == "instruct" and self.train == "head":
            raise StagegptError("train=head is for classify (instruct has no new head); use "
                                "last-block or all, or LoRA", "train")
        if self.lora is not None and not isinstance(self.lora, LoRAConfig):
            raise StagegptError(f"lora must be a LoRAConfig or None, got "
                                f"{type(self.lora).__name__}", "lora")
        if self.lora is not None and self.train not in (None, "head"):
            raise StagegptError(f"train={self.train} does not go with LoRA, which trains the "
                                "adapters (and a classifier's head) with the base frozen; use "
                                "head or leave it out", "train")
        check_switch(self.truncate, "truncate")
        if self.truncate and self.task == "instruct":
            raise StagegptError("truncate is for classify texts; an instruct record must fit "
                                "the context whole (its reply is what is learned): leave "
                                "`truncate` out and shorten the records", "truncate",
                                mentions=("truncate",))

    @property
    def mode(self) -> str:
        if self.lora is not None:
            return "lora"
        return self.train or ("head" if self.task == "classify" else "all")


def check_mode(lm: LanguageModel, mode: str) -> None:
    """Refuse a train `mode` the language model has no weights for."""
    if mode == "last-block" and not hasattr(lm, "h"):
        raise StagegptError(f"train=last-block needs transformer blocks, and stage {lm.stage} "
                            "has none; use head or all", "train")


def freeze_for(lm: LanguageModel, mode: str) -> None:
    """Set which of the language model's weights learn in train `mode`."""
    check_mode(lm, mode)
    lm.requires_grad_(mode == "all")
    if mode == "last-block":
        lm.h[-1].requires_grad_(True)
        lm.ln_f.requires_grad_(True)


def _shown(setting: Any) -> str:
    """A setting in a message: LoRA's in a few words, anything else repr'd, shortened."""
    if isinstance(setting, LoRAConfig):
        return f"rank {setting.rank}, alpha {setting.alpha:g}, targets {','.join(setting.targets)}"
    if setting is None:
        return "none"
    text = repr(setting)
    return text if len(text) <= 60 else text[:57] + "..."


class FinetuneTrainer(Trainer):
    """Fine-tune the checkpoint `base` on the data dir `data_dir`, into `out_dir`."""

    def __init__(self, base: str | Path, data_dir: str | Path, out_dir: str | Path,
                 train_config: TrainConfig, settings: FinetuneSettings, resume: bool = False,
                 progress: bool = True, on_step=None):
        """The settings are checked against the base here, before `out_dir` is created."""
        if not isinstance(settings, FinetuneSettings):
            raise StagegptError(f"settings must be a FinetuneSettings, e.g. "
                                f"FinetuneSettings('classify'), got {type(settings).__name__}",
                                "settings")
        if not isinstance(train_config, TrainConfig):
            raise StagegptError(f"train_config must be a TrainConfig, got "
                                f"{type(train_config).__name__}", "train_config")
        self.settings = settings
        base_dir = resolve_checkpoint_dir(base, "base")
        check_apart(base_dir, Path(out_dir), what="base checkpoint")  # out/best over it
        self.base_dir = base_dir.resolve()
        self.base = load_checkpoint(self.base_dir)
        if self.base.tokenizer is None:
            raise StagegptError(f"the base {base} has no tokenizer; fine-tune a checkpoint "
                                "saved with its tokenizer")
        check_mode(self.base.model, settings.mode)
        if settings.lora is not None:
            check_targets(self.base.model, settings.lora)
        self.base_sha256 = weights_sha256(self.base_dir)
        super().__init__(self.base.stage, self.base.config, train_config, data_dir, out_dir,
                         resume, progress, on_step, fast=False)

    # ---- data ------------------------------------------------------------------------

    def _load_data(self, model_config: ModelConfig) -> None:
        self.mc, self.tokenizer = model_config, self.base.tokenizer
        self.meta, records = read_finetune_dir(self.data_dir)
        self.meta["sha256"] = records_sha256(self.data_dir)  # a resume refuses other records
        task = self.settings.task
        if self.meta["task"] != task:
            raise StagegptError(f"task={task}, but {self.data_dir} holds {self.meta['task']} "
                                f"data; prepare {task} data or use {self.meta['task']}", "task")
        if self.meta["tokenizer"] != self.tokenizer.to_spec():
            raise StagegptError(
                f"{self.data_dir} was prepared for the {self.meta['tokenizer'].get('name')} "
                f"tokenizer, but the base {self.base_dir} uses {self.tokenizer.name}'s "
                "(another vocabulary); prepare the data with --tokenizer from:BASE")
        self.labels = self.meta.get("labels")
        self.template = template_for(self.tokenizer) if task == "instruct" else None
        self.records = records
        self.encoded = {split: self._encode(split, rs) for split, rs in records.items()}
        check_fits(training_bytes(self.stage, self.mc, self.tc),
                   f"fine-tuning stage {self.stage} with batch {self.tc.batch_size}",
                   "use a smaller batch")

    def _encode(self, split: str, records: list[dict]) -> list[tuple]:
        """classify: (ids, label id); instruct: (inputs, targets)."""
        T, out = self.mc.block_size, []
        for number, record in enumerate(records, 1):
            where = f"{self.data_dir / split}.jsonl:{number}"
            try:
                if self.settings.task == "classify":
                    ids = self.tokenizer.encode(record["text"])
                    item = (ids[:T] if self.settings.truncate else ids,
                            self.labels.index(record["label"]))
                else:
                    item = loss_targets(*encode_dialog(self.tokenizer, self.template,
                                                       record["messages"]))
                    if "answer" in record:  # exact match encodes it after training
                        self.tokenizer.encode(record["answer"])
            except StagegptError as err:
                raise StagegptError(f"{where}: {err}") from None
            no_reply = self.settings.task == "instruct" and all(t == IGNORE for t in item[1])
            if not item[0] or no_reply:
                raise StagegptError(f"{where}: the record has no tokens to learn from")
            if len(item[0]) > T:
                advice = ("pass `truncate=True` to keep the first block_size tokens"
                          if self.settings.task == "classify" else "shorten the record")
                raise StagegptError(f"{where}: the record has {len(item[0])} tokens, more "
                                    f"than the base's context of {T}; {advice}",
                                    mentions=("truncate",))
            out.append(item)
        return out

    def _batch(self, items: list[tuple]) -> tuple[torch.Tensor, ...]:
        pad = self.tokenizer.start_id
        if self.settings.task == "classify":
            ids, lengths = pad_batch([i for i, _ in items], pad)
            return ids, lengths, torch.tensor([label for _, label in items])
        x, _ = pad_batch([x for x, _ in items], pad)  # (B, T)
        y, _ = pad_batch([y for _, y in items], IGNORE)  # (B, T): padding is no target
        return x, y

    def _micro_batch(self) -> tuple[torch.Tensor, ...]:
        """B records drawn with the run's data generator (saved with every checkpoint)."""
        B, train = self.tc.batch_size, self.encoded["train"]
        picks = torch.randint(len(train), (B * self.world,), generator=self.data_rng)
        rows = picks[self.rank * B:(self.rank + 1) * B].tolist()
        return tuple(t.to(self.device) for t in self._batch([train[i] for i in rows]))

    def _fixed_val_batches(self) -> list[tuple[torch.Tensor, ...]]:
        """The first eval_batches x batch_size val records, in order."""
        B, val = self.tc.batch_size, self.encoded["val"][:self.tc.eval_batches * self.tc.batch_size]
        return [self._batch(val[i:i + B]) for i in range(0, len(val), B)]

    def _loss(self, runner: torch.nn.Module, *batch: torch.Tensor) -> torch.Tensor:
        if self.settings.task == "classify":
            ids, lengths, labels = batch
            return F.cross_entropy(runner(ids, lengths).float(), labels)
        x, y = batch
        return runner(x, y)[1]  # cross-entropy ignores the IGNORE targets (prompt, padding)

    # ---- the module and its checkpoints ----------------------------------------------

    @property
    def lm(self) -> LanguageModel:
        return self.model.lm if isinstance(self.model, Classifier) else self.model

    def _make_model(self) -> torch.nn.Module:
        lm = copy.deepcopy(self.base.model).train()
        freeze_for(lm, self.settings.mode)  # head, lora: all of the base frozen
        if self.settings.lora is not None:
            attach_lora(lm, self.settings.lora)
        if self.settings.task == "classify":
            return Classifier(lm, len(self.labels))
        return lm

    def info(self) -> dict[str, Any]:
        """config.json's "finetune": what a loader and a resume need to know."""
        info = {"task": self.settings.task, "train": self.settings.mode,
                "truncate": self.settings.truncate, "data_source": self.meta.get("source")}
        if self.labels is not None:
            info["labels"] = self.labels
        if self.template is not None:
            info["template"] = self.template.to_dict()
        info["base"] = {"path": str(self.base_dir), "sha256": self.base_sha256}
        return info

    # ---- resuming --------------------------------------------------------------------

    def _find_resume(self, resume: bool) -> Path | None:
        """The fine-tuning settings and the base are compared first: a checkpoint of
        another kind of run would fail the optimizer's check, and so would every other."""
        if resume and step_dirs(self.out_dir):
            self._check_resumable(step_dirs(self.out_dir)[-1])
        return super()._find_resume(resume)

    def _check_resumable(self, directory: Path) -> None:
        """Refuse a newest checkpoint of other fine-tuning settings or another base."""
        meta = read_json(directory / CONFIG_FILE, "checkpoint config")
        info = meta.get("finetune") if isinstance(meta, dict) else None
        if not isinstance(info, dict):
            raise StagegptError(f"cannot resume {self.out_dir}: {directory} is not a "
                                "fine-tuning checkpoint; choose a new `out_dir`",
                                mentions=("out_dir",))
        ours = self.info()
        changed = {k: (info.get(k), ours.get(k)) for k in RESUME_SETTINGS
                   if info.get(k) != ours.get(k)}
        lora = read_lora(directory, info)
        if lora != self.settings.lora:
            changed["LoRA"] = (lora, self.settings.lora)
        if changed:
            details = "; ".join(f"{k} {_shown(run)} in the run, {_shown(now)} now"
                                for k, (run, now) in changed.items())
            raise StagegptError(f"cannot resume {self.out_dir}: its fine-tuning settings differ "
                                f"({details}); rerun with the run's own settings or choose a "
                                "new `out_dir`", mentions=("out_dir",))
        self._check_same_base(directory, info.get("base"))

    def _check_same_base(self, directory: Path, recorded: Any) -> None:
        if recorded is None and (directory / WEIGHTS_FILE).is_file():
            return  # a whole-model run written before every run recorded its base
        if isinstance(recorded, dict) and self._is_our_base(recorded):
            return
        origin = recorded.get("path") if isinstance(recorded, dict) else None
        raise StagegptError(f"cannot resume {self.out_dir}: it fine-tunes the base "
                            f"{origin or '(unrecorded)'}, not {self.base_dir} (their weights "
                            "differ); pass the original `base` or choose a new `out_dir`",
                            mentions=("base", "out_dir"))

    def _is_our_base(self, recorded: dict) -> bool:
        if recorded.get("sha256") is None and self.base_sha256 is None:
            return recorded.get("path") == str(self.base_dir)
        return recorded.get("sha256") == self.base_sha256

    def _write_checkpoint(self, directory: Path, optimizer_state: dict | None = None) -> None:
        head = self.model.head if isinstance(self.model, Classifier) else None
        write_finetuned(directory, self.lm, self.tokenizer, self.info(), head,
                        self.settings.lora, self.settings.mode in ("last-block", "all"),
                        self._trainer_state(), optimizer_state, self._extra())

    def _load_weights(self, directory: Path) -> None:  # _check_resumable has compared it
        if (directory / WEIGHTS_FILE).is_file():
            load_weights_into(self.lm, read_weights(directory / WEIGHTS_FILE), directory)
        if self.settings.lora is not None:
            load_adapter_state(self.lm, read_weights(directory / ADAPTERS_FILE),
                               str(directory / ADAPTERS_FILE))
        if isinstance(self.model, Classifier):
            load_weights_into(self.model.head, read_weights(directory / HEAD_FILE),
                              directory / HEAD_FILE)
