"""What counts as a number when it comes from outside (JSON, TOML, Python callers): bools
are not integers here, and a "real" must convert to a float that is not NaN. A switch
that guards files must be a bool: "no" is true in Python."""

from __future__ import annotations

import math
import os

from stagegpt.errors import StagegptError


def is_path(value: object) -> bool:
    """A str or path-like naming something: not empty ("" would be the current directory)."""
    return isinstance(value, str | os.PathLike) and bool(os.fspath(value))


def check_switch(value: object, param: str) -> None:
    """`value` is True or False, not a truthy stand-in."""
    if not isinstance(value, bool):
        raise StagegptError(f"{param} must be True or False, got {value!r:.40}", param)


def is_int(value: object) -> bool:
    """An int, not a bool (which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """An int or float that is a number as a float: not NaN, not an integer past 1.8e308."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return not math.isnan(float(value))
    except OverflowError:
        return False
