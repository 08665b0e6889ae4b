"""The one exception type for mistakes a user can fix."""

from __future__ import annotations

import re

COMMON_FLAGS = {"out_dir": "--out", "data_dir": "--data"}  # where the flag is not --out-dir


class StagegptError(Exception):
    """A user error: bad input, a missing file, an impossible setting.

    The CLI prints its message as one line on stderr and exits with code 2, so the message
    should say what was wrong and what to do about it. A message about one Python
    parameter starts with its name and sets `param`; the CLI shows the flag instead. Other
    parameters it names go in backticks and in `mentions` ("choose a new `out_dir`",
    "pass `resume=True`"), and the CLI shows them as flags too (--out, --resume).
    """

    def __init__(self, message: str, param: str | None = None, mentions: tuple[str, ...] = ()):
        super().__init__(message)
        self.param = param
        self.mentions = tuple(mentions)

    def __reduce__(self):  # a worker process's error keeps its parameters
        return type(self), (str(self), self.param, self.mentions)

    def for_flags(self, flags: dict[str, str] | None = None) -> str:
        """The message with the parameters it names shown as the CLI flags that set them
        (`flags` maps parameters to flags; by default max_new_tokens -> --max-new-tokens)."""
        flags = {**COMMON_FLAGS, **(flags or {})}
        text = self._leading_as_flag(flags)
        for name in self.mentions:  # `name` -> --name, `name=True` -> --name, `name=v` -> --name v
            flag = _flag(name, flags)
            text = re.sub(rf"`{name}(?:=True)?`", flag, text)
            text = re.sub(rf"`{name}=([^`]*)`", rf"{flag} \1", text)
        return text

    def _leading_as_flag(self, flags: dict[str, str]) -> str:
        text = str(self)
        rest = text[len(self.param):] if self.param is not None else ""
        if (self.param is None or not text.startswith(self.param)
                or rest[:1].isalnum() or rest[:1] in ("_", "/", ".")):  # "data/x" is a path
            return text
        return _flag(self.param, flags) + rest


def _flag(param: str, flags: dict[str, str]) -> str:
    return flags.get(param, "--" + param.replace("_", "-"))
