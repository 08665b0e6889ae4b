"""Whether a run dir's newest checkpoint may be resumed by this command: the same stage,
model, training settings (beyond what a resume may change) and data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stagegpt.errors import StagegptError
from stagegpt.fileio import read_json
from stagegpt.model.config import ModelConfig
from stagegpt.train.checkpoints import CONFIG_FILE
from stagegpt.train.config import TrainConfig, changed_settings


def same_model(saved: Any, config: ModelConfig) -> bool:
    """Whether a checkpoint's saved model config is `config` (a config saved before a field
    was added has that field's default)."""
    try:
        return isinstance(saved, dict) and ModelConfig.from_dict(saved) == config
    except StagegptError:
        return False


def check_resumable(newest: Path, stage: int, mc: ModelConfig, tc: TrainConfig,
                    data_meta: dict, out_dir: Path) -> None:
    """Refuse to resume the checkpoint `newest` of the run in `out_dir` with other settings
    or other data (`data_meta`: the data dir's meta.json) than it was trained with."""
    meta = read_json(newest / CONFIG_FILE, "checkpoint config")
    if not isinstance(meta, dict):
        raise StagegptError(f"{newest / CONFIG_FILE} is not a checkpoint config; delete "
                            f"{newest} to resume from the checkpoint before it")
    if meta.get("stage") != stage or not same_model(meta.get("model"), mc):
        raise StagegptError(
            f"cannot resume: {newest} holds stage {meta.get('stage')} with "
            f"{meta.get('model')}, but this command asks for stage {stage} with "
            f"{mc.to_dict()}; use the original settings or a new `out_dir`",
            mentions=("out_dir",))
    changed = changed_settings(meta.get("train"), tc)
    if changed:
        raise StagegptError(
            f"cannot resume {out_dir} with other training settings ({changed}); rerun "
            "with the run's own settings (only device, compile, max_seconds, eval_every "
            "and ckpt_every may change), or train into a new `out_dir`", mentions=("out_dir",))
    saved = meta.get("data_sha256")  # None in a checkpoint written before it was recorded
    if saved is not None and saved != data_meta.get("sha256"):
        raise StagegptError(
            f"cannot resume {out_dir} on other data: it trained on {meta.get('data')!r:.80} "
            f"(text sha256 {str(saved)[:12]}...), and this data dir holds other text; pass "
            "the run's own `data_dir`, or train into a new `out_dir`",
            mentions=("data_dir", "out_dir"))
