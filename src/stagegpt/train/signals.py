"""Stop signals routed to a handler for the length of a block."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def signals_to(handler: Callable, signals=STOP_SIGNALS) -> Iterator[None]:
    """Send `signals` to `handler(signum, frame)` inside the block, then restore the
    handlers that were there. Outside the main thread, where Python cannot set a handler,
    the signals are left alone."""
    previous = {}
    with contextlib.suppress(ValueError):
        for sig in signals:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, handler_before in previous.items():
            signal.signal(sig, handler_before)
