"""The one exception type for mistakes a user can fix."""


class StagegptError(Exception):
    """A user error: bad input, a missing file, an impossible setting.

    The CLI prints its message as one line on stderr and exits with code 2,
    so the message should say what was wrong and what to do about it.
    """
