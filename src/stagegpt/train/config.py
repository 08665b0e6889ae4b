"""What a training run needs besides the model's shape (`TrainConfig`), and TOML configs."""

from __future__ import annotations

import dataclasses
import sys
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from stagegpt.errors import StagegptError
from stagegpt.fileio import JSON_ERRORS, json_problem, read_text
from stagegpt.model.config import ModelConfig
from stagegpt.values import check_switch, is_int, is_path, is_real

MAX_COUNT = 1 << 40  # steps, batches: anything past this is a typo, not a plan
MAX_LR = 1.0  # an AdamW step moves each weight by about lr: past 1 a run only diverges


def _shown(value: object, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width] + f"... ({len(text):,} characters)"


def _check_real(name: str, value: object) -> float:
    """`value` as a float, if it is a finite number >= 0 (an int that no float holds is
    refused, not overflowed)."""
    if not is_real(value) or not 0 <= value <= sys.float_info.max:
        raise StagegptError(f"{name} must be a finite number >= 0, got {_shown(value)}", name)
    return float(value)


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not is_int(value) or not low <= value <= high:
        raise StagegptError(f"{name} must be an integer from {low} to {high:,}, got {value!r}",
                            name)


@dataclass
class TrainConfig:
    """Everything a training run needs besides the model shape."""

    max_steps: int = 1000
    batch_size: int = 12
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 20
    ckpt_every: int = 500
    seed: int = 1337
    device: str = "cpu"
    dtype: str = "float32"
    compile: bool = False
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "eval_every", "eval_batches",
                     "ckpt_every"):
            _check_int(name, getattr(self, name), 1, MAX_COUNT)
        _check_int("warmup_steps", self.warmup_steps, 0, MAX_COUNT)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        for name in ("lr", "min_lr", "weight_decay", "grad_clip", "beta1", "beta2"):
            setattr(self, name, _check_real(name, getattr(self, name)))  # TOML's 0 -> 0.0
        self._check_rates()
        for name in ("beta1", "beta2"):
            if not getattr(self, name) < 1:
                raise StagegptError(f"{name} must be below 1, got {getattr(self, name)!r}", name)
        if self.dtype not in ("float32", "bfloat16"):
            raise StagegptError(f"dtype must be float32 or bfloat16, got {self.dtype!r}", "dtype")
        if self.device not in ("cpu", "cuda", "mps", "auto"):
            raise StagegptError(f"device must be cpu, cuda, mps or auto, got {self.device!r}",
                                "device")
        if not isinstance(self.compile, bool):
            raise StagegptError(f"compile must be true or false, got {self.compile!r}", "compile")
        if self.max_seconds is not None and not (is_real(self.max_seconds)
                                                 and self.max_seconds > 0):
            raise StagegptError(f"max_seconds must be a number > 0, got {self.max_seconds!r}",
                                "max_seconds")

    def _check_rates(self) -> None:
        """The schedule's rates and AdamW's decay, each already a finite float >= 0."""
        if not 0 < self.lr <= MAX_LR:
            raise StagegptError(f"lr must be above 0 and at most {MAX_LR:g}, got {self.lr!r} "
                                "(AdamW moves each weight by about lr a step; 1e-4 to 1e-2 "
                                "is usual)", "lr")
        if self.min_lr > self.lr:
            raise StagegptError(f"min_lr {self.min_lr!r} (by default 1e-4) must be at most lr "
                                f"{self.lr!r}: the schedule decays from lr down to min_lr; set "
                                "it too (lr / 10 is usual)", "min_lr")
        if self.lr * self.weight_decay > 1:
            raise StagegptError(f"weight_decay ({self.weight_decay!r}) times lr ({self.lr!r}) "
                                "must be at most 1: AdamW scales each decayed weight by 1 - lr "
                                "x weight_decay a step (0.1 is usual)", "weight_decay")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RESUMABLE_CHANGES = ("device", "compile", "max_seconds", "eval_every", "ckpt_every")


def changed_settings(saved: Any, config: TrainConfig) -> str:
    """What `config` changes of a run's saved training settings, beyond what a resume may
    change (where it runs, how long the run may train, how often it reports); '' if nothing.
    A run saved without settings (an old checkpoint) is taken as it is."""
    if not isinstance(saved, dict):
        return ""
    now = config.to_dict()
    diffs = [f"{key} was {saved[key]!r}, now {now[key]!r}" for key in now
             if key in saved and key not in RESUMABLE_CHANGES and saved[key] != now[key]]
    return "; ".join(diffs)


def load_toml(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a TOML config with optional [model] and [train] tables."""
    text = read_text(path, "config file")
    try:
        data = tomllib.loads(text)
    except JSON_ERRORS as err:  # also integers past 4,300 digits, nesting past the stack
        reason = str(err) if isinstance(err, tomllib.TOMLDecodeError) else json_problem(err)
        raise StagegptError(f"config file {path} is not valid TOML: {reason}") from None
    unknown = set(data) - {"model", "train", "stage", "preset"}
    if unknown:
        raise StagegptError(
            f"config file {path} has unknown tables {sorted(unknown)}; use [model] and [train]"
        )
    if not isinstance(data.get("preset", ""), str) or not is_int(data.get("stage", 1)):
        raise StagegptError(f"config file {path}: `preset` must be a name and `stage` a number")
    for table in ("model", "train"):
        if not isinstance(data.get(table, {}), dict):
            raise StagegptError(f"config file {path}: `{table}` must be a [{table}] table of "
                                "settings, not a single value")
    return data


def replace_known(obj: Any, values: dict[str, Any], where: str | None = None) -> Any:
    """dataclasses.replace that names unknown keys instead of raising TypeError (`where`:
    what held them, such as a config file's table)."""
    known = {f.name for f in fields(obj)}
    unknown = set(values) - known
    if unknown:
        raise StagegptError(f"unknown {where or type(obj).__name__} keys: "
                            f"{', '.join(sorted(unknown))}; the known ones are "
                            f"{', '.join(sorted(known))}")
    return dataclasses.replace(obj, **values)


def check_trainer_arguments(model_config: Any, train_config: Any, data_dir: Any,
                            out_dir: Any, resume: Any = False) -> None:
    """The types Trainer needs, refused in one line naming the parameter."""
    check_switch(resume, "resume")
    for name, value, kind, build in (
            ("model_config", model_config, ModelConfig, "ModelConfig(...) or "
             "ModelConfig.from_preset(name)"),
            ("train_config", train_config, TrainConfig, "TrainConfig(...)")):
        if not isinstance(value, kind):
            raise StagegptError(f"{name} must be a {kind.__name__}, got "
                                f"{type(value).__name__}; build one with {build}", name)
    for name, value in (("data_dir", data_dir), ("out_dir", out_dir)):
        if not is_path(value):
            raise StagegptError(f"{name} must be a non-empty path (a str or Path), got "
                                f"{value!r:.60}", name)
