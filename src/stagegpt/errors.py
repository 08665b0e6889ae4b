"""The one exception type for mistakes a user can fix."""

from __future__ import annotations


class StagegptError(Exception):
    """A user error: bad input, a missing file, an impossible setting.

    The CLI prints its message as one line on stderr and exits with code 2, so the message
    should say what was wrong and what to do about it. A message about one Python
    parameter starts with its name and sets `param`; the CLI shows the flag instead.
    """

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param

    def __reduce__(self):  # a worker process's error keeps its parameter
        return type(self), (str(self), self.param)

    def for_flags(self, flags: dict[str, str] | None = None) -> str:
        """The message with its leading parameter named as the CLI flag that sets it
        (`flags` maps parameters to flags; by default max_new_tokens -> --max-new-tokens)."""
        text = str(self)
        rest = text[len(self.param):] if self.param is not None else ""
        if (self.param is None or not text.startswith(self.param)
                or rest[:1].isalnum() or rest[:1] in ("_", "/", ".")):  # "data/x" is a path
            return text
        flag = (flags or {}).get(self.param, "--" + self.param.replace("_", "-"))
        return flag + rest
