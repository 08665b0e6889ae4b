"""Whether a run dir's newest checkpoint may be resumed by this command: the same stage,
model, training settings (beyond what a resume may change) and data."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from stagegpt.errors import StagegptError
from stagegpt.fileio import read_json
from stagegpt.model.config import ModelConfig
from stagegpt.train.checkpoints import CONFIG_FILE
from stagegpt.train.config import TrainConfig, changed_settings
from stagegpt.values import is_int


def same_model(saved: Any, config: ModelConfig) -> bool:
    """Whether a checkpoint's saved model config is `config` (a config saved before a field
    was added has that field's default)."""
    try:
        return isinstance(saved, dict) and ModelConfig.from_dict(saved) == config
    except StagegptError:
        return False


def _saved_world(newest: Path) -> int | None:
    """The number of processes the checkpoint's run trained with (None if unrecorded; a
    damaged trainer state is refused when it is loaded)."""
    with contextlib.suppress(StagegptError):
        state = read_json(newest / "trainer_state.json", "trainer state")
        world = state.get("world_size") if isinstance(state, dict) else None
        return world if is_int(world) and world >= 1 else None
    return None


def _processes(n: int) -> str:
    return f"{n} process{'es' if n > 1 else ''}"


def same_global_batch(saved: Any, newest: Path, tc: TrainConfig, world: int,
                      out_dir: Path) -> Any:
    """The run's saved training settings with this command's batch_size if `world`
    processes of it make the run's global batch (so the run sees the same batches);
    refused if they make another."""
    then_world = _saved_world(newest)
    if not isinstance(saved, dict) or then_world is None or not is_int(
            saved.get("batch_size")):
        return saved
    then = saved["batch_size"] * then_world
    if then == tc.batch_size * world:
        return {**saved, "batch_size": tc.batch_size}
    if then_world == world:
        return saved  # changed_settings names the other batch_size
    fit = (f"pass `batch_size` {then // world}" if then % world == 0 else
           f"run it on a number of processes that divides {then}")
    raise StagegptError(
        f"cannot resume {out_dir} on {_processes(world)} of batch_size {tc.batch_size}: it "
        f"trained on {_processes(then_world)} of batch_size {saved['batch_size']}, {then} "
        f"windows a step; {fit} to go on with the same batches", mentions=("batch_size",))


def check_resumable(newest: Path, stage: int, mc: ModelConfig, tc: TrainConfig,
                    data_meta: dict, out_dir: Path, world: int = 1) -> None:
    """Refuse to resume the checkpoint `newest` of the run in `out_dir` with other settings
    or other data (`data_meta`: the data dir's meta.json) than it was trained with. Another
    number of processes (`world`) may resume it with the same global batch."""
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
    changed = changed_settings(same_global_batch(meta.get("train"), newest, tc, world,
                                                 out_dir), tc)
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
