"""One thread runs every model computation of the playground; requests take turns on it.

A request's work is an iterator of events (one per sampled token, or a single attention
result). The worker admits at most `capacity` of them at once; the next gets `Busy`, which
the server answers with HTTP 503. Admitted requests take turns, one event each, so a long
generation never holds up a short one and every stream starts soon. Each iterator owns its
whole state (prompt, KV cache, seeded generator), and only this thread touches the models,
so two requests never share or interleave state: what one streams depends only on what it
asked for.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from stagegpt.errors import StagegptError
from stagegpt.values import is_int

log = logging.getLogger("stagegpt.play")

Event = dict  # {"event": name, ...}: what a request is sent, as JSON
Deliver = Callable[[Event | None], None]  # thread-safe; None means the job has ended


class Busy(Exception):
    """The worker holds `capacity` requests already."""


@dataclass
class Job:
    events: Iterator[Event]  # the work, advanced one event per turn on the worker thread
    deliver: Deliver
    cancelled: threading.Event = field(default_factory=threading.Event)


def check_capacity(capacity: int) -> None:
    if not is_int(capacity) or capacity < 1:
        raise StagegptError(f"capacity must be an integer >= 1, got {capacity!r:.40}",
                            "capacity")


class ModelWorker:
    def __init__(self, capacity: int = 32):
        check_capacity(capacity)
        self.capacity = capacity
        self._admitted = 0
        self._stopping = False
        self._lock = threading.Lock()
        self._inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="stagegpt-play-model",
                                        daemon=True)
        self._thread.start()

    def submit(self, events: Iterator[Event], deliver: Deliver) -> Job:
        """Queue a job; raise Busy when `capacity` jobs are admitted already."""
        with self._lock:
            if self._stopping:
                raise Busy("the server is stopping")
            if self._admitted >= self.capacity:
                raise Busy(f"the model is busy with {self._admitted} requests; try again in a "
                           "moment")
            self._admitted += 1
        job = Job(events, deliver)
        self._inbox.put(job)
        return job

    @property
    def stopping(self) -> bool:
        """True once `stop` was called: jobs are refused, and those admitted end."""
        return self._stopping

    def stop(self, timeout: float | None = 5.0) -> None:
        """End every job (each gets an "error" event saying so, then its end) and the
        thread; wait up to `timeout` seconds for it, or not at all with None."""
        with self._lock:
            self._stopping = True
        self._inbox.put(None)
        if timeout is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        turns: deque[Job] = deque()
        while True:
            try:
                while True:  # take in new jobs; wait for one only when there is no work
                    job = self._inbox.get(block=not turns)
                    if job is None:
                        for waiting in turns:
                            waiting.deliver({"event": "error", "message": "the server stopped"})
                            self._finish(waiting)
                        return
                    turns.append(job)
            except queue.Empty:
                pass
            job = turns.popleft()
            if self._advance(job):
                turns.append(job)
            else:
                self._finish(job)

    def _advance(self, job: Job) -> bool:
        """Run one event of the job and hand it over; False once the job is over."""
        if job.cancelled.is_set():
            return False
        try:
            event = next(job.events)
        except StopIteration:
            return False
        except StagegptError as err:
            job.deliver({"event": "error", "message": str(err)})
            return False
        except Exception as err:  # a bug must not stop the worker that serves everyone
            log.exception("playground job failed")
            job.deliver({"event": "error", "message": f"internal error ({type(err).__name__}); "
                                                      "see the server's log"})
            return False
        job.deliver(event)
        return True

    def _finish(self, job: Job) -> None:
        close = getattr(job.events, "close", None)  # a generator frees its state now
        try:
            if close is not None:
                close()
        except Exception:
            log.exception("closing a playground job failed")
        job.deliver(None)
        with self._lock:
            self._admitted -= 1
