"""The stage ladder: train every stage on one budget and show what each idea buys.

Each stage trains with the same data, seed, batch, context, width and step budget in
OUT/stage{N} (in turn, or `jobs` at a time in worker processes: tools/ladder_jobs.py);
then ladder.md / ladder.csv (the table), ladder.png (validation curves, with the entropy
rate and bigram floor for synthetic data) and samples.md are written.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from stagegpt.data.datasets import load_tokenizer_from_data, read_meta
from stagegpt.errors import StagegptError
from stagegpt.fileio import ensure_dir, read_json, write_json, write_text
from stagegpt.generation import check_sampling_args, generate
from stagegpt.model.config import ModelConfig
from stagegpt.model.stages import STAGES
from stagegpt.tools.endings import Item, items_for_window, score_endings
from stagegpt.tools.evaluate import SCORE_TOKENS, split_loss
from stagegpt.tools.inspection import flops_per_token, kv_cache_bytes_per_token
from stagegpt.tools.ladder_jobs import train_side_by_side
from stagegpt.train.config import TrainConfig
from stagegpt.train.distributed import env_world
from stagegpt.train.plots import plot_curves
from stagegpt.train.rundir import RunLock, check_apart, clean_stale_temp_dirs, read_metrics
from stagegpt.train.trainer import Trainer

SETTINGS_FILE = "ladder.json"


@dataclass
class LadderRow:
    stage: int
    adds: str
    params: int
    flops_per_token: int
    train_loss: float
    val_loss: float
    val_ppl: float
    tokens_per_sec: float
    wall_time: float
    kv_bytes_per_token: int  # what decoding caches per token (0 without attention)
    endings_acc: float | None  # the HellaSwag-style endings test (tools/endings.py)
    endings_acc_norm: float | None  # the same, length-normalized


def _settings(stages, model_config, train_config, data_dir) -> dict:
    return {"stages": list(stages), "model": model_config.to_dict(),
            "train": train_config.to_dict(), "data": str(Path(data_dir).resolve())}


def _check_settings(out_dir: Path, settings: dict, resume: bool) -> None:
    path = out_dir / SETTINGS_FILE
    if not path.exists():
        return
    if not resume:
        raise StagegptError(f"{out_dir} already holds a ladder; pass `resume=True` to continue "
                            "it or choose a new `out_dir`", mentions=("resume", "out_dir"))
    previous = read_json(path, "ladder settings")
    if isinstance(previous, dict) and isinstance(previous.get("model"), dict):
        with contextlib.suppress(StagegptError):  # fields added since get their defaults
            previous["model"] = ModelConfig.from_dict(previous["model"]).to_dict()
    if previous != settings:
        raise StagegptError(f"cannot resume: {path} was run with other settings "
                            f"({_differences(previous, settings)}); rerun with the original "
                            "settings or choose a new `out_dir`", mentions=("out_dir",))


def _differences(previous: Any, settings: dict) -> str:
    """What differs, setting by setting: 'train.lr 0.002 then, 0.001 now; ...'."""
    if not isinstance(previous, dict):
        return "the file is not a table"
    changed = []
    for key, now in settings.items():
        then = previous.get(key)
        if isinstance(now, dict) and isinstance(then, dict):
            changed += [(f"{key}.{k}", then.get(k), now.get(k)) for k in {**then, **now}
                        if then.get(k) != now.get(k)]
        elif then != now:
            changed.append((key, then, now))
    shown = "; ".join(f"{name} {then!r:.60} then, {now!r:.60} now"
                      for name, then, now in sorted(changed, key=lambda c: c[0])[:4])
    return shown + ("; ..." if len(changed) > 4 else "")


def steps_for_seconds(stage: int, model_config: ModelConfig, train_config: TrainConfig,
                      data_dir: Path, seconds: float, scratch: Path,
                      fast: bool = True) -> int | None:
    """Time a few steps of `stage` to turn a time budget into a step budget (None if a
    signal stopped the timing: Ctrl-C stops the ladder there too).

    The step count fixes the learning-rate schedule, so a time budget is converted once,
    before training, and the run stays exactly resumable.
    """
    probe = replace(train_config, max_steps=8, eval_every=10_000, ckpt_every=10_000,
                    max_seconds=None, warmup_steps=0)  # no note about the probe's schedule
    trainer = Trainer(stage, model_config, probe, data_dir, scratch, progress=False, fast=fast)
    times: list[float] = []
    last = [time.perf_counter()]

    def clock(_trainer, _row):
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    trainer.on_step = clock
    if trainer.fit().interrupted:
        return None
    per_step = sorted(times[2:])[len(times[2:]) // 2]  # median, past the warm-up steps
    return max(1, int(seconds / per_step))


def _row_for(stage: int, trainer: Trainer, result, items: list[Item] | None) -> LadderRow:
    """The table row; its val loss covers the val split (up to SCORE_TOKENS), not the
    curve's sample of batches."""
    model = trainer.model
    val_loss = split_loss(model, trainer.val_tokens, fast=trainer.fast,
                          max_tokens=SCORE_TOKENS, check_ids=False)  # the trainer checked
    endings = score_endings(model, items) if items else None
    return LadderRow(
        stage=stage, adds=STAGES[stage].idea, params=model.num_params(),
        flops_per_token=flops_per_token(model)["train"],
        train_loss=result.train_loss, val_loss=val_loss,
        val_ppl=math.exp(val_loss), tokens_per_sec=result.tokens_per_sec,
        wall_time=result.elapsed, kv_bytes_per_token=kv_cache_bytes_per_token(model),
        endings_acc=endings and endings.accuracy,
        endings_acc_norm=endings and endings.accuracy_norm,
    )


def write_table(rows: list[LadderRow], out_dir: Path) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(asdict(rows[0])))
    writer.writeheader()
    writer.writerows(asdict(r) for r in rows)
    write_text(out_dir / "ladder.csv", buffer.getvalue())
    lines = ["| stage | adds | params | FLOPs/token (train) | train loss | val loss | "
             "val ppl | endings acc (norm) | tokens/s | wall time | KV cache bytes/token |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        kv = f"{r.kv_bytes_per_token:,}" if r.kv_bytes_per_token else "-"
        endings = "-" if r.endings_acc is None else (
            f"{r.endings_acc:.1%} ({r.endings_acc_norm:.1%})")
        lines.append(f"| {r.stage} | {r.adds} | {r.params:,} | {r.flops_per_token:,} | "
                     f"{r.train_loss:.4f} | {r.val_loss:.4f} | {r.val_ppl:.2f} | {endings} | "
                     f"{r.tokens_per_sec:,.0f} | {r.wall_time:.1f} s | {kv} |")
    table = "\n".join(lines) + "\n"
    write_text(out_dir / "ladder.md", table)
    return table


def write_plot(stages, out_dir: Path, meta: dict, x: str = "step") -> None:
    """Validation curves against `x`: "step", or "elapsed" (seconds) for a time budget,
    where stages train different numbers of steps."""
    curves = {}
    for stage in stages:
        rows = read_metrics(out_dir / f"stage{stage}")
        curves[f"stage {stage}"] = [(r[x], r["val_loss"]) for r in rows
                                    if r.get("val_loss") is not None]
    hlines = {}
    if "entropy_rate" in meta:
        hlines["source entropy rate"] = meta["entropy_rate"]
    if "bigram_entropy" in meta:
        hlines["bigram floor"] = meta["bigram_entropy"]
    plot_curves(curves, out_dir / "ladder.png", hlines, title="validation loss by stage",
                xlabel="training seconds" if x == "elapsed" else "step")


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt's ids (the start token for an empty one); refused now if it cannot encode."""
    if not isinstance(prompt, str):
        raise StagegptError(f"prompt must be a string, got {type(prompt).__name__}", "prompt")
    try:
        return tokenizer.encode(prompt) if prompt else [tokenizer.start_id]
    except StagegptError as err:
        raise StagegptError(f"prompt cannot be encoded: {err}", "prompt") from None


def sample_text(model, tokenizer, prompt: str, tokens: int, seed: int,
                fast: bool = True) -> str:
    """The stage's sample for samples.md: temperature 0.8, top-k 40, a fixed seed."""
    ids = prompt_ids(tokenizer, prompt)[-model.config.block_size:]
    out = generate(model, torch.tensor([ids]), tokens, temperature=0.8, top_k=40, seed=seed,
                   fast=fast)
    return tokenizer.decode(out[0].tolist())


def write_samples(samples: dict[int, str], out_dir: Path, prompt: str, tokens: int,
                  seed: int) -> None:
    parts = [f"# Samples\n\nPrompt: {prompt!r}, seed {seed}, {tokens} tokens, "
             "temperature 0.8, top-k 40.\n"]
    for stage, text in samples.items():
        parts.append(f"## Stage {stage}: {STAGES[stage].idea}\n\n```\n{text}\n```\n")
    write_text(out_dir / "samples.md", "\n".join(parts))


@dataclass
class StageResult:
    row: LadderRow
    sample: str  # its text for samples.md


@dataclass(frozen=True)
class StageJob:
    """What the stages of one ladder share; `run(stage)` trains, scores and samples one."""

    data_dir: Path
    out_dir: Path
    model_config: ModelConfig
    train_config: TrainConfig
    max_seconds: float | None
    prompt: str
    sample_tokens: int
    progress: bool
    fast: bool

    def run(self, stage: int, on_step=None) -> StageResult | None:
        """Train `stage` in OUT/stage{N} (resuming it), score it and sample from it; None
        if it was interrupted. `on_step(trainer, row)` replaces its progress bar."""
        run_dir = self.out_dir / f"stage{stage}"
        config = self.train_config
        if self.max_seconds is not None:
            steps = _budget(stage, self.model_config, config, self.data_dir,
                            self.max_seconds, run_dir, self.fast)
            if steps is None:
                return None
            config = replace(config, max_steps=steps)
        trainer = Trainer(stage, self.model_config, config, self.data_dir, run_dir,
                          resume=True, progress=self.progress and on_step is None,
                          on_step=on_step, fast=self.fast)
        result = trainer.fit()
        if result.interrupted:
            return None
        # the endings test: the same questions for every stage (the same val split)
        items = items_for_window(trainer.val_tokens, self.model_config.block_size) or []
        row = _row_for(stage, trainer, result, items)
        sample = sample_text(trainer.model.eval(), trainer.tokenizer, self.prompt,
                             self.sample_tokens, config.seed, self.fast)
        return StageResult(row, sample)


def run_ladder(data_dir: str | Path, out_dir: str | Path, model_config: ModelConfig,
               train_config: TrainConfig, stages=(1, 2, 3, 4, 5), resume: bool = False,
               max_seconds: float | None = None, prompt: str = "", sample_tokens: int = 200,
               progress: bool = True, fast: bool = True,
               jobs: int = 1) -> list[LadderRow] | None:
    """Train `stages`; return the table rows (None if interrupted).

    Everything is checked before the first step: the samples' prompt and length too.
    fast: train, score and sample through `stagegpt.fast` (the same numbers, sooner).
    jobs: stages trained at once, each in a process of its own with an equal share of
    torch's threads (tools/ladder_jobs.py); 1 trains them in this process, in turn. The
    workers are spawned, so a script calling this with jobs > 1 needs the usual
    `if __name__ == "__main__":` guard.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    check_apart(data_dir, out_dir)
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise StagegptError(f"jobs must be a whole number >= 1, got {jobs!r}", "jobs")
    if env_world() > 1:
        raise StagegptError("the ladder does not train across torchrun's processes "
                            "(WORLD_SIZE > 1); run it as one command, with --jobs for "
                            "stages side by side")
    meta = read_meta(data_dir)
    check_sampling_args(sample_tokens, 0.8, 40)
    prompt_ids(load_tokenizer_from_data(data_dir), prompt)
    model_config = replace(model_config, vocab_size=meta["vocab_size"])
    job = StageJob(data_dir, out_dir, model_config, train_config, max_seconds, prompt,
                   sample_tokens, progress, fast)
    with RunLock(out_dir, "ladder"):
        return _run(job, meta, stages, resume, jobs)


def _run(job: StageJob, meta: dict, stages, resume: bool,
         jobs: int) -> list[LadderRow] | None:
    settings = _settings(stages, job.model_config, job.train_config, job.data_dir)
    settings["max_seconds"] = job.max_seconds
    _check_settings(job.out_dir, settings, resume)
    ensure_dir(job.out_dir)
    clean_stale_temp_dirs(job.out_dir)  # the table, plot or samples a killed ladder was writing
    write_json(job.out_dir / SETTINGS_FILE, settings)
    if jobs == 1 or len(stages) == 1:
        results = _train_in_turn(job, stages)
    else:
        results = train_side_by_side(job, stages, min(jobs, len(stages)))
    if results is None:
        return None
    rows = [results[stage].row for stage in stages]
    write_table(rows, job.out_dir)
    write_plot(stages, job.out_dir, meta, "step" if job.max_seconds is None else "elapsed")
    write_samples({stage: results[stage].sample for stage in stages}, job.out_dir,
                  job.prompt, job.sample_tokens, job.train_config.seed)
    return rows


def _train_in_turn(job: StageJob, stages) -> dict[int, StageResult] | None:
    results = {}
    for stage in stages:
        results[stage] = job.run(stage)
        if results[stage] is None:
            return None
    return results


def _budget(stage, model_config, train_config, data_dir, seconds, run_dir,
            fast) -> int | None:
    """Steps for a time budget, measured once per stage and remembered for --resume (None
    if interrupted while measuring: nothing is remembered)."""
    path = run_dir / "budget.json"
    if path.exists():
        budget = read_json(path, "ladder budget")
        steps = budget.get("max_steps") if isinstance(budget, dict) else None
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise StagegptError(f"{path} is damaged (no max_steps); delete {run_dir} to run "
                                f"stage {stage} again from the start")
        return steps
    scratch = run_dir.parent / f".probe{stage}"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        steps = steps_for_seconds(stage, model_config, train_config, data_dir, seconds,
                                  scratch, fast)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if steps is None:
        return None
    write_json(path, {"max_steps": steps, "seconds": seconds})
    return steps
