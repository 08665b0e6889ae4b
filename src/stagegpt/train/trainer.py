"""The training loop: `Trainer(...).fit()` and `stagegpt train`.

One step = `grad_accum` micro-batches of `batch_size` windows per process. Everything a
resume needs (weights, optimizer, step, data sampler and RNG states) is saved in each
checkpoint, and the learning rate depends only on the step and `max_steps`, so a run
interrupted at step N and resumed is bit-identical to one that never stopped.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from stagegpt.data.datasets import sample_batch
from stagegpt.errors import StagegptError
from stagegpt.fast import FastModel, accelerate, cpu
from stagegpt.fileio import write_text
from stagegpt.model import LanguageModel, ModelConfig, build_model
from stagegpt.model.layers import eval_mode
from stagegpt.train.checkpoints import (
    OPTIMIZER_FILE,
    check_optimizer_state,
    load_optimizer_state,
    load_weights_into,
    read_trainer_state,
    read_weights,
    rng_to_str,
    save_checkpoint,
)
from stagegpt.train.config import TrainConfig, check_trainer_arguments
from stagegpt.train.distributed import (
    agree_to_stop,
    from_every_rank,
    mean_over_ranks,
    resolve_device,
    world_and_rank,
)
from stagegpt.train.optim import lr_at, make_optimizer
from stagegpt.train.plots import plot_run
from stagegpt.train.resume import check_resumable
from stagegpt.train.run_data import load_run_data
from stagegpt.train.rundir import (
    RunLock,
    check_apart,
    clean_stale_temp_dirs,
    prune_step_checkpoints,
    read_metrics,
    run_exists,
    step_dir,
    step_dirs,
)
from stagegpt.train.signals import signals_to

KEEP_CHECKPOINTS = 2


@dataclass
class TrainResult:
    step: int
    train_loss: float | None
    val_loss: float | None
    tokens_per_sec: float
    elapsed: float
    interrupted: bool
    out_dir: Path


class Trainer:
    """Train one stage on a prepared data dir, writing checkpoints and metrics to `out_dir`."""

    def __init__(self, stage: int, model_config: ModelConfig, train_config: TrainConfig,
                 data_dir: str | Path, out_dir: str | Path, resume: bool = False,
                 progress: bool = True, on_step: Callable[[Trainer, dict], None] | None = None,
                 fast: bool = True):
        """fast: train through `stagegpt.fast.accelerate(model)` (the same numbers, faster on
        a CPU); False trains the plain model as written."""
        check_trainer_arguments(model_config, train_config, data_dir, out_dir, resume)
        self.stage, self.tc, self.fast, self.on_step = stage, train_config, fast, on_step
        self.data_dir, self.out_dir = Path(data_dir), Path(out_dir)
        check_apart(self.data_dir, self.out_dir)
        self.progress = progress
        self._load_data(model_config)
        self.world, self.rank = world_and_rank()
        self.device = resolve_device(train_config.device)
        self.lock = RunLock(self.out_dir)  # held by the main process while it trains
        if self._is_main():
            self.lock.check_free()
        self.resume = resume
        self.resume_from = self._find_resume(resume)
        self.stop_signal: int | None = None

    # ---- setup -------------------------------------------------------------------------

    def _load_data(self, model_config: ModelConfig) -> None:
        """Read and check the data dir: meta, mc, the splits, the tokenizer."""
        data = load_run_data(self.data_dir, self.stage, model_config, self.tc)
        self.meta, self.mc, self.tokenizer = data.meta, data.model_config, data.tokenizer
        self.train_tokens, self.val_tokens = data.train_tokens, data.val_tokens

    def _find_resume(self, resume: bool) -> Path | None:
        if not run_exists(self.out_dir):
            return None
        if not resume:
            raise StagegptError(
                f"{self.out_dir} already holds a training run; pass `resume=True` to continue "
                "it or choose a new `out_dir`", mentions=("resume", "out_dir"))
        found = step_dirs(self.out_dir)
        if not found:
            return None
        check_resumable(found[-1], self.stage, self.mc, self.tc, self.meta, self.out_dir,
                        self.world)
        return found[-1]

    def _build(self) -> None:
        torch.manual_seed(self.tc.seed)
        self.model = self._make_model().to(self.device)
        self.optimizer = make_optimizer(self.model, self.tc)
        self.data_rng = torch.Generator().manual_seed(self.tc.seed)
        self.step, self.tokens, self.elapsed = 0, 0, 0.0
        self.saved_step, self.rank_rngs = -1, []
        self.best_val, self.rows = math.inf, []
        if self.resume_from is not None:
            self._restore(self.resume_from)
        # Dropout draws from the global RNG; each rank gets its own stream.
        if self.resume_from is None:
            torch.manual_seed(self.tc.seed + self.rank)
        # what computes losses
        self.scorer: LanguageModel | FastModel = accelerate(self.model) if self.fast else self.model
        self.runner = self.scorer
        if self.tc.compile:
            self.runner = self.scorer.compiled() if self.fast else torch.compile(self.scorer)
        if self.world > 1:
            self.runner = torch.nn.parallel.DistributedDataParallel(self.runner)
        self.val_batches = self._fixed_val_batches()

    # Hooks another task's trainer replaces (stagegpt.finetune): the module, its checkpoints.
    def _make_model(self) -> torch.nn.Module:
        return build_model(self.stage, self.mc)

    def _load_weights(self, directory: Path) -> None:  # names and shapes checked first
        load_weights_into(self.model, read_weights(directory / "model.safetensors"), directory)

    def _write_checkpoint(self, directory: Path, optimizer_state: dict | None = None) -> None:
        save_checkpoint(directory, self.model, self.tokenizer, self._trainer_state(),
                        optimizer_state, self._extra(), overwrite=True)

    def _restore(self, directory: Path) -> None:
        """Everything is checked against this run before any of it is loaded."""
        state = read_trainer_state(directory)
        optimizer_state = load_optimizer_state(directory)
        check_optimizer_state(optimizer_state, self.optimizer, directory / OPTIMIZER_FILE)
        self._load_weights(directory)
        self.optimizer.load_state_dict(optimizer_state)
        self.step, self.tokens = state["step"], state["tokens"]
        self.elapsed, self.best_val = state["elapsed"], state["best_val"]
        self.data_rng.set_state(state["data_rng"])
        own = state.get("torch_rng_ranks", [])  # each DDP rank's dropout stream
        torch.set_rng_state(own[self.rank] if self.rank < len(own) else state["torch_rng"])
        self.saved_step = self.step
        self.rows = [r for r in read_metrics(self.out_dir) if r["step"] <= self.step]
        if self._is_main():
            tqdm.write(f"resuming from {directory} at step {self.step}", file=sys.stderr)

    def _fixed_val_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        rng = torch.Generator().manual_seed(self.tc.seed + 1)
        return [self._my_rows(self.val_tokens, rng) for _ in range(self.tc.eval_batches)]

    def _my_rows(self, tokens, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's slice of one global batch, so every world size sees the same data."""
        B = self.tc.batch_size
        x, y = sample_batch(tokens, B * self.world, self.mc.block_size, rng)
        rows = slice(self.rank * B, (self.rank + 1) * B)
        return x[rows].clone(), y[rows].clone()  # not views holding every rank's rows

    def _is_main(self) -> bool:
        return self.rank == 0

    # ---- the loop ----------------------------------------------------------------------

    def _autocast(self):
        if self.tc.dtype == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _micro_batch(self) -> tuple[torch.Tensor, ...]:
        return tuple(t.to(self.device) for t in self._my_rows(self.train_tokens, self.data_rng))

    def _train_step(self) -> float:
        lr = lr_at(self.step, self.tc)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        for micro in range(self.tc.grad_accum):
            batch = self._micro_batch()
            last = micro == self.tc.grad_accum - 1
            sync = contextlib.nullcontext() if last or self.world == 1 else self.runner.no_sync()
            with sync, self._autocast():
                loss = self._loss(self.runner, *batch)
                (loss / self.tc.grad_accum).backward()
            total += loss.item() / self.tc.grad_accum
        if self.tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    def _loss(self, runner: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.fast:
            return runner(x, y, return_logits=False)[1]  # no (B*T, V) logits held
        return runner(x, y)[1]

    @torch.no_grad()
    def evaluate(self) -> float:
        losses = []
        with eval_mode(self.model):
            for batch in self.val_batches:
                with self._autocast():
                    loss = self._loss(self.scorer, *(t.to(self.device) for t in batch))
                losses.append(loss.item())
        return sum(losses) / len(losses)

    def fit(self) -> TrainResult:
        """Train to `max_steps` (or until a signal or `max_seconds`); return the final figures.

        The run dir is this process's meanwhile: another trainer on it is refused.
        """
        if self._is_main():
            self.lock.acquire()
            self.resume_from = self._find_resume(self.resume)  # as it is now we hold it
        try:
            self._build()
            if self._is_main():
                clean_stale_temp_dirs(self.out_dir)
                if self.tc.warmup_steps >= self.tc.max_steps > self.step:
                    tqdm.write(f"note: warmup_steps ({self.tc.warmup_steps}) >= max_steps "
                               f"({self.tc.max_steps}): the learning rate never reaches its "
                               "peak", file=sys.stderr)
                cpu.note_if_slow_bf16(self.tc.dtype, self.device, "training")
            return self._fit()
        finally:
            self.lock.release()

    def _fit(self) -> TrainResult:
        try:
            with signals_to(self.request_stop):
                return self._loop()
        finally:
            self._release_ddp()
            if isinstance(self.scorer, FastModel):
                self.scorer.close()  # the model's own layers back, as it was built

    def _release_ddp(self) -> None:
        """Free the DDP wrapper while the process group is still alive. Freed later, its
        reducer would drop the group's last reference and join gloo's worker threads while
        holding the GIL, which a worker finishing an all-reduce needs: a deadlock at exit."""
        if self.world > 1 and self.runner is not self.scorer:
            self.runner = self.scorer
            gc.collect()  # now, even if a reference cycle holds it

    def _loop(self) -> TrainResult:
        self.model.train()
        tokens_per_step = self.tc.batch_size * self.mc.block_size * self.tc.grad_accum * self.world
        bar = tqdm(total=self.tc.max_steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not (self.progress and self._is_main()),
                   desc=f"stage {self.stage}")
        train_loss, val_loss, speed, smooth = None, None, 0.0, None
        start_elapsed, t0 = self.elapsed, time.perf_counter()
        time_up = self._out_of_time()  # max_seconds counts the run's earlier sessions too
        stop = self.step >= self.tc.max_steps or time_up
        if time_up and self._is_main():
            tqdm.write(f"the run has trained {self.elapsed:.0f} s, its max_seconds: nothing "
                       "to do (raise it to train on)", file=sys.stderr)
        while not (stop or self._signalled_alone()):
            t_step = time.perf_counter()
            train_loss = mean_over_ranks(self.world, self.device, self._train_step())
            self.step += 1
            self._check_finite(train_loss, "loss")
            self.tokens += tokens_per_step
            speed = tokens_per_step / max(time.perf_counter() - t_step, 1e-9)
            self.elapsed = start_elapsed + time.perf_counter() - t0
            row = {"step": self.step, "tokens": self.tokens, "train_loss": train_loss,
                   "val_loss": None, "lr": lr_at(self.step - 1, self.tc),
                   "tokens_per_sec": speed, "elapsed": self.elapsed}
            self.rows.append(row)
            time_up, signalled = agree_to_stop(self.world, self.device, self._out_of_time(),
                                                   self.stop_signal is not None)
            done = self.step == self.tc.max_steps or time_up
            stop = done or signalled
            if self.step % self.tc.eval_every == 0 or done:
                val_loss = row["val_loss"] = mean_over_ranks(self.world, self.device,
                                                             self.evaluate())
                self._check_finite(val_loss, "validation loss")
                self._after_eval(val_loss)
            if self.step % self.tc.ckpt_every == 0 or stop:
                self._save_step_checkpoint()
            bar.update(1)
            if self.on_step is not None:
                self.on_step(self, row)
            smooth = speed if smooth is None else 0.9 * smooth + 0.1 * speed
            shown = {"loss": f"{train_loss:.4f}", "tok_s": f"{smooth:,.0f}"}
            if val_loss is not None:  # none before the first evaluation
                shown["val"] = f"{val_loss:.4f}"
            bar.set_postfix(shown, refresh=False)
        bar.close()
        if self.stop_signal is not None and self.saved_step != self.step:
            self._save_step_checkpoint()
        interrupted = self.step < self.tc.max_steps and not time_up
        if interrupted and self._is_main():
            tqdm.write(f"stage {self.stage} stopped at step {self.step}; checkpoint saved. "
                       f"Continue with the same command plus --resume.", file=sys.stderr)
        if self.rows and val_loss is None:  # a finished run resumed: report its last figures
            train_loss = self.rows[-1]["train_loss"]
            val_loss = next((r["val_loss"] for r in reversed(self.rows) if r["val_loss"]), None)
        mean_speed = self.tokens / self.elapsed if self.elapsed else 0.0
        return TrainResult(self.step, train_loss, val_loss, mean_speed, self.elapsed,
                           interrupted, self.out_dir)

    def _check_finite(self, loss: float, what: str) -> None:
        """Stop a diverged run before its weights are saved or its metrics written."""
        if math.isfinite(loss):
            return
        kept = (f"the last good checkpoint is kept in {self.out_dir}" if step_dirs(self.out_dir)
                else "no checkpoint was written")
        raise StagegptError(f"lr {self.tc.lr} may be too high: the {what} became {loss} at step "
                            f"{self.step} and training stopped ({kept}); lower it, or clip "
                            "gradients with grad_clip > 0", "lr")

    def _out_of_time(self) -> bool:
        return self.tc.max_seconds is not None and self.elapsed >= self.tc.max_seconds

    def _signalled_alone(self) -> bool:
        """A signal that came after this step's stop decision. A single process acts on it
        before the next step; DDP ranks act on it together at the next step's agreement."""
        return self.world == 1 and self.stop_signal is not None

    # ---- output ------------------------------------------------------------------------

    def _after_eval(self, val_loss: float) -> None:
        if not self._is_main():
            return
        self._write_metrics()
        plot_run(self.rows, self.out_dir / "loss.png", title=f"stage {self.stage}")
        if val_loss < self.best_val:
            self.best_val = val_loss
            self._write_checkpoint(self.out_dir / "best")

    def _write_metrics(self) -> None:
        write_text(self.out_dir / "metrics.jsonl",
                   "".join(json.dumps(r) + "\n" for r in self.rows))

    def _trainer_state(self) -> dict[str, Any]:
        return {"step": self.step, "tokens": self.tokens, "elapsed": self.elapsed,
                "best_val": self.best_val, "max_steps": self.tc.max_steps,
                "data_rng": rng_to_str(self.data_rng.get_state()),
                "torch_rng": rng_to_str(torch.get_rng_state()),
                "world_size": self.world,
                **({"torch_rng_ranks": self.rank_rngs} if self.rank_rngs else {})}

    def _extra(self) -> dict[str, Any]:
        return {"train": self.tc.to_dict(), "data": str(self.data_dir),
                "data_sha256": self.meta.get("sha256")}

    def _save_step_checkpoint(self) -> None:
        self.saved_step = self.step
        self.rank_rngs = from_every_rank(self.world, rng_to_str(torch.get_rng_state()))
        if not self._is_main():
            return
        self._write_metrics()
        target = step_dir(self.out_dir, self.step)
        self._write_checkpoint(target, self.optimizer.state_dict())
        self.rank_rngs = []  # not in best/, written at another step
        prune_step_checkpoints(self.out_dir, KEEP_CHECKPOINTS)

    def request_stop(self, signum: int = signal.SIGINT, frame=None) -> None:
        """Stop after the current step and save a checkpoint, as Ctrl-C does."""
        self.stop_signal = signum
