"""What the playground serves: one checkpoint, or every stage of a ladder.

The models are loaded once, when the server starts, from the dirs given on its command
line; a request names a stage by number and never a path.

    --ckpt DIR     one model (a checkpoint dir, or a run dir: its newest checkpoint)
    --ladder DIR   DIR/ladder.csv (one row per stage, with its val loss) and the run of
                   each stage in DIR/stage{N}, as `stagegpt ladder` writes them
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stagegpt.errors import StagegptError
from stagegpt.fileio import read_text
from stagegpt.interop import load_checkpoint
from stagegpt.limits import check_fits
from stagegpt.model.layers import attention_layers
from stagegpt.model.stages import STAGES, LanguageModel
from stagegpt.tools.inspection import kv_cache_bytes_per_token
from stagegpt.values import is_path

LADDER_TABLE = "ladder.csv"


@dataclass
class ServedModel:
    """One model the page can pick: its stage, weights, tokenizer and (from a ladder) the
    val loss the ladder's table gives it."""

    stage: int
    model: LanguageModel
    tokenizer: Any
    path: Path
    val_loss: float | None = None

    def describe(self) -> dict[str, Any]:
        """What the page needs to know about this model, as JSON."""
        config = self.model.config
        n_layer, n_head = self.attention_shape()
        return {"stage": self.stage, "idea": STAGES[self.stage].idea, "val_loss": self.val_loss,
                "attention_layers": n_layer, "attention_heads": n_head,
                "block_size": config.block_size, "vocab_size": config.vocab_size,
                "params": self.model.num_params(), "run": self.path.name}

    def attention_shape(self) -> tuple[int, int]:
        """(attention layers, heads per layer); (0, 0) for stages 1-2, which have none."""
        layers = attention_layers(self.model)
        return (len(layers), layers[0].n_head) if layers else (0, 0)


def load_served(ckpt: str | Path | None = None,
                ladder: str | Path | None = None) -> dict[int, ServedModel]:
    """The models to serve, by stage number: a single checkpoint, or a whole ladder."""
    if (ckpt is None) == (ladder is None):
        raise StagegptError("give `ckpt` (a checkpoint or run dir) or `ladder` (a ladder's "
                            "dir), one of the two", mentions=("ckpt", "ladder"))
    for name, value in (("ckpt", ckpt), ("ladder", ladder)):
        if value is not None and not is_path(value):
            raise StagegptError(f"{name} must name a directory, got {value!r:.40}", name)
    if ckpt is not None:
        served = _load_one(Path(ckpt))
        return {served.stage: served}
    return {row_stage: _load_one(Path(ladder) / f"stage{row_stage}", val_loss)
            for row_stage, val_loss in read_ladder_table(Path(ladder)).items()}


def read_ladder_table(ladder_dir: Path) -> dict[int, float]:
    """Stage -> val loss from a ladder's ladder.csv, each value checked."""
    if not ladder_dir.is_dir():
        raise StagegptError(f"ladder dir {ladder_dir} does not exist; pass the --out dir of "
                            "`stagegpt ladder`", "ladder")
    path = ladder_dir / LADDER_TABLE
    if not path.exists():
        raise StagegptError(f"ladder dir {ladder_dir} has no {LADDER_TABLE}; pass the --out dir "
                            "of `stagegpt ladder` once it has finished a stage, or serve one "
                            "checkpoint with `ckpt`", "ladder", ("ckpt",))
    text = read_text(path, "ladder table", max_bytes=1 << 20)
    losses: dict[int, float] = {}
    for row in csv.DictReader(io.StringIO(text)):
        stage, val_loss = _number(row.get("stage"), int), _number(row.get("val_loss"), float)
        if stage not in STAGES or val_loss is None or not math.isfinite(val_loss):
            raise StagegptError(f"ladder table {path} has a damaged row ({dict(row)!r:.80}); "
                                "rerun `stagegpt ladder --resume` to rewrite it")
        losses[stage] = val_loss
    if not losses:
        raise StagegptError(f"ladder table {path} lists no stage; wait for the ladder to "
                            "finish a stage")
    return losses


def _number(text: str | None, kind: type) -> Any:
    try:
        return kind(text)
    except (TypeError, ValueError):
        return None


def _load_one(path: Path, val_loss: float | None = None) -> ServedModel:
    ckpt = load_checkpoint(path)
    if ckpt.tokenizer is None:
        raise StagegptError(f"checkpoint {path} has no tokenizer, so prompts cannot be "
                            "encoded; serve a checkpoint saved with its tokenizer", "ckpt")
    ckpt.model.eval()
    return ServedModel(ckpt.stage, ckpt.model, ckpt.tokenizer, ckpt.path, val_loss)


def check_streams_fit(served: dict[int, ServedModel], capacity: int) -> None:
    """`capacity` generations at once, each with a KV cache over the largest model's whole
    context, must fit in memory: a large model's 32 streams can need tens of GB."""
    per_stream = max(kv_cache_bytes_per_token(s.model) * s.model.config.block_size
                     for s in served.values())
    check_fits(capacity * per_stream, f"serving {capacity} generations at once, each with a "
               "KV cache over the whole context,", "serve fewer at once (`capacity`)",
               "capacity", ("capacity",))
