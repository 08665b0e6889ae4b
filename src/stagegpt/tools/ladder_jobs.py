"""Ladder stages side by side: each in a process of its own, with a share of the threads.

A small stage's step is too short to keep several threads busy: on a 2-core Zen 3 EPYC,
the demo's ladder took 203-225 s with two stages at once and a thread apiece, against
226-268 s for the stages one after the other with two (three interleaved pairs,
docs/performance.md). So the ladder can train `jobs` stages at once, the largest first
so that the small ones fill in at the end.

Each worker is a fresh interpreter (spawned: forking a process whose OpenMP threads have
run can hang). A worker reports every step to the parent, which draws one progress bar
per stage. Ctrl-C reaches the whole process group: the workers' trainers stop after their
step and save a checkpoint, as a lone `stagegpt train` does, and the parent waits for
them, so `--resume` continues exactly where they stopped. A worker ignores Ctrl-C outside
its trainer (from its start: it is spawned with SIGINT blocked), and one whose parent
dies (SIGKILL) stops its stage the same way and exits instead of training on alone.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import threading

import torch
from tqdm import tqdm

from stagegpt.errors import StagegptError
from stagegpt.fast import configure_process
from stagegpt.train.distributed import resolve_device
from stagegpt.train.signals import signals_to

MAX_AUTO_JOBS = 2  # each worker holds a stage: more at once multiply the memory
POLL_SECONDS = 0.1

_reports: multiprocessing.Queue | None = None  # a worker's line to the parent
_stop = None  # set by the parent: finish this step, save, and stop
_orphaned = threading.Event()  # set in a worker whose parent died: the same, then exit
_busy = threading.Lock()  # held by a worker while it runs a stage


def auto_jobs(stages: int, device: str = "cpu") -> int:
    """The default: two stages at once on a CPU with two threads to share, else one."""
    if resolve_device(device).type != "cpu":
        return 1
    return max(1, min(MAX_AUTO_JOBS, stages, torch.get_num_threads()))


@contextlib.contextmanager
def _ctrl_c_held():
    """SIGINT blocked while workers are spawned, which inherit the mask: a Ctrl-C during
    their start-up (seconds of imports) raised KeyboardInterrupt tracebacks in them. The
    parent gets a Ctrl-C that came meanwhile when the block ends."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _start_worker(threads: int, reports, stop) -> None:
    global _reports, _stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # outside training; the trainer stops itself
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # see _ctrl_c_held
    reports.cancel_join_thread()  # a lost progress report must not hold up the exit
    _reports, _stop = reports, stop
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    torch.set_num_threads(threads)
    configure_process()


def _exit_with_parent() -> None:
    """A worker whose parent was killed trained its stage to the end, holding the stage's
    lock, then waited for work forever: now its stage stops after the step (a checkpoint
    saved, as on Ctrl-C) and the worker exits."""
    multiprocessing.connection.wait([multiprocessing.parent_process().sentinel])
    _orphaned.set()
    with _busy:
        os._exit(1)


def _run_stage(job, stage: int):
    def report(trainer, row) -> None:
        _reports.put((stage, row["step"], trainer.tc.max_steps, row["train_loss"],
                      row["val_loss"]))
        if _stop.is_set() or _orphaned.is_set():
            trainer.request_stop()

    with _busy:
        return job.run(stage, on_step=report)


class StageBars:
    """One progress bar per stage, drawn in the parent from its workers' reports."""

    def __init__(self, enabled: bool):
        self.enabled, self.bars = enabled, {}

    def show(self, stage: int, step: int, total: int, loss: float, val: float | None) -> None:
        if not self.enabled:
            return
        if stage not in self.bars:
            self.bars[stage] = tqdm(total=total, initial=step - 1, unit="step",
                                    desc=f"stage {stage}", position=len(self.bars),
                                    dynamic_ncols=True)
        bar = self.bars[stage]
        bar.update(step - bar.n)
        shown = {"loss": f"{loss:.4f}"} | ({} if val is None else {"val": f"{val:.4f}"})
        bar.set_postfix(shown, refresh=False)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def train_side_by_side(job, stages, jobs: int) -> dict | None:
    """`job.run(stage)` for every stage, `jobs` at a time, each in a worker process:
    {stage: its result}, or None if interrupted. (`job` is the ladder's StageJob.)"""
    context = multiprocessing.get_context("spawn")
    reports, stop = context.Queue(), context.Event()
    threads = max(1, torch.get_num_threads() // jobs)
    bars = StageBars(job.progress)
    pool = cf.ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker,
                                  initargs=(threads, reports, stop))
    waiting = sorted(stages, reverse=True)  # later stages are at least as large
    running: dict[cf.Future, int] = {}
    results: dict = {}
    try:
        # SIGTERM stops the ladder as Ctrl-C does (a killed parent would orphan its workers)
        with signals_to(signal.default_int_handler, (signal.SIGTERM,)):
            while waiting or running:
                while waiting and len(running) < jobs and not stop.is_set():
                    stage = waiting.pop(0)
                    with _ctrl_c_held():
                        running[pool.submit(_run_stage, job, stage)] = stage
                if not running:
                    break
                for future in _next_done(running, reports, bars):
                    results[running.pop(future)] = future.result()
                if None in results.values():  # a worker's trainer was stopped by a signal
                    stop.set()
    except KeyboardInterrupt:
        stop.set()
        return None
    except cf.process.BrokenProcessPool:
        stop.set()
        raise StagegptError("a ladder worker process died (killed, out of memory, or started "
                            "by a Python script without the `if __name__ == \"__main__\":` "
                            "guard); continue with `resume=True`, or train one stage at a "
                            "time with `jobs=1`", mentions=("resume", "jobs")) from None
    except BaseException:
        stop.set()
        raise
    finally:
        while running:  # they stop after their step; keep reading what they report
            for future in _next_done(running, reports, bars):
                running.pop(future)
        pool.shutdown()
        bars.close()
    return None if stop.is_set() else results


def _next_done(running: dict[cf.Future, int], reports, bars: StageBars) -> set[cf.Future]:
    """The futures done within a poll, after showing the reports that came in meanwhile."""
    done, _ = cf.wait(running, timeout=POLL_SECONDS, return_when=cf.FIRST_COMPLETED)
    with contextlib.suppress(queue.Empty):
        while True:
            bars.show(*reports.get_nowait())
    return done
