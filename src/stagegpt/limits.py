"""How much memory the machine can give, checked before a size from outside reaches the
allocator: a refusal that says what was asked and what there is, not an allocator traceback."""

from __future__ import annotations

import os

from stagegpt.errors import StagegptError

GB = 1 << 30


def available_bytes() -> int:
    """Memory available to a new allocation now (MemAvailable), else physical memory."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: let the allocator decide


def check_fits(nbytes: int, what: str, advice: str, param: str | None = None,
               mentions: tuple[str, ...] = ()) -> None:
    """Refuse `what` if its `nbytes` exceed the memory available now (`param` and
    `mentions` as in `StagegptError`)."""
    available = available_bytes()
    if nbytes > available:
        raise StagegptError(f"{what} needs {nbytes / GB:,.1f} GB of memory but this machine has "
                            f"{available / GB:,.1f} GB available; {advice}", param, mentions)
