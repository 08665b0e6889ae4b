"""Crash-safe writes: everything goes to a temporary name first and is renamed into place.

A reader (or a resumed run) therefore sees either the old file or the new one, never a
half-written mix, even if the process is killed mid-write.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stagegpt.errors import StagegptError
from stagegpt.values import check_switch


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp and mkdtemp create owner-only (0600/0700) entries; what we rename into place gets
# the permissions a plain open() or mkdir() would give, so others can read data dirs and
# checkpoints as usual.
_UMASK = _read_umask()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _name_path(err: BaseException, path: Path, tmp: Path | None = None) -> None:
    """Name `path` in an OSError that names no file (a write that hit a full disk), and
    the final path instead of the temporary one where it names a file inside `tmp`."""
    if not isinstance(err, OSError):
        return
    if err.filename is None:
        err.filename = str(path)
    elif tmp is not None and str(err.filename).startswith(str(tmp)):
        err.filename = str(path) + str(err.filename)[len(str(tmp)):]


def ensure_dir(path: str | Path) -> Path:
    """Create `path` (and parents) or explain why it cannot be written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StagegptError(f"cannot create directory {path}: {err.strerror}; choose another "
                            "output path") from None
    if not os.access(path, os.W_OK):
        raise StagegptError(f"directory {path} is not writable; choose another output path")
    return path


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside `path`; on success rename it to `path`. What `path`
    names now must be a regular file, if anything: a rename would replace a device or a
    FIFO with a file."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise StagegptError(f"{path} exists and is not a regular file (a directory, a device "
                            "or a pipe); give the path of a file to write")
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _name_path(err, path)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_file(path, "w") as f:
        f.write(text)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def check_swappable(target: str | Path) -> None:
    """Refuse a directory `atomic_dir` cannot swap in: `.`, `..` or `/`, which a rename
    cannot move."""
    if Path(target).name in ("", ".", ".."):
        raise StagegptError(f"{target} names the current directory or one above it; give "
                            "the directory to write by its name, e.g. out/model")


def check_replaceable(target: str | Path, overwrite: bool) -> None:
    """Refuse to replace an existing, non-empty `target` unless `overwrite` is set (and
    one `atomic_dir` cannot swap in)."""
    check_switch(overwrite, "overwrite")
    check_swappable(target)
    target = Path(target)
    if not overwrite and target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise StagegptError(f"overwrite is off and {target} already exists; pass overwrite=True "
                            "to replace it, or choose a new path", "overwrite")


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces `target` in one rename.

    If `target` already exists it is moved aside first and removed only after the new
    directory is in place, so at every moment one complete version exists on disk.
    """
    target = Path(target)
    check_swappable(target)
    ensure_dir(target.parent)
    recover_dir(target)
    remove_stale_tmp(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.{os.getpid()}.",
                                suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)
        yield tmp
        for child in tmp.iterdir():
            if child.is_file():
                os.chmod(child, 0o666 & ~_UMASK)  # safetensors writes 0600
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old"
            if old.exists() or old.is_symlink():
                _remove_old(old)
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        if old is not None:
            _remove_old(old, ignore_errors=True)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            recover_dir(target)  # the swap failed halfway: put the old version back
        _name_path(err, target, tmp)
        raise


def recover_dir(target: str | Path) -> None:
    """Finish an `atomic_dir` swap that a crash interrupted between its two renames: put
    the old version back if the new one never arrived, or remove it if the new one did.

    Only a writer may call this (a reader doing it mid-swap would break the writer's
    second rename); readers use `readable_dir`.
    """
    target = Path(target)
    old = target.parent / f".{target.name}.old"
    if not old.is_dir():
        return
    if target.exists():
        _remove_old(old, ignore_errors=True)
    else:
        os.replace(old, target)


def _remove_old(old: Path, ignore_errors: bool = False) -> None:
    """Remove the version a swap moved aside: a directory, or the symlink that was the
    target (the directory it points to is not ours to delete)."""
    if not old.is_symlink():
        shutil.rmtree(old, ignore_errors=ignore_errors)
        return
    try:
        old.unlink()
    except OSError:
        if not ignore_errors:
            raise


def remove_stale_tmp(target: str | Path) -> None:
    """Remove the temporary directories that killed `atomic_dir` writers left beside
    `target`. The writer's PID is in each name; a live writer's directory is left alone."""
    target = Path(target)
    remove_dead_writers_tmp(target.parent, re.escape(target.name))


def remove_dead_writers_tmp(directory: str | Path, name: str = r"[^.]+") -> None:
    """Remove the `atomic_dir` temp dirs in `directory` (for targets whose names match the
    regex `name`) whose writer, the PID in the dir's name, is no longer alive."""
    pattern = re.compile(rf"\.{name}\.(\d+)\.[^.]+\.tmp")
    for entry in Path(directory).glob(".*.tmp"):
        match = pattern.fullmatch(entry.name)
        if match and entry.is_dir() and not _process_alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists but belongs to someone else
    return True


def readable_dir(target: str | Path) -> Path:
    """`target`, or the old version an interrupted (or running) `atomic_dir` swap set aside."""
    target = Path(target)
    old = target.parent / f".{target.name}.old"
    return old if not target.exists() and old.is_dir() else target


MAX_JSON_BYTES = 64 << 20  # config, meta and state files are kilobytes


def _not_a_file(mode: int) -> str:
    """What a path of `mode` is instead of a regular file."""
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    if stat.S_ISFIFO(mode):
        return "is a named pipe (FIFO), not a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a file"
    return "is not a regular file"


def read_small_file(path: str | Path, what: str = "file",
                    max_bytes: int = MAX_JSON_BYTES) -> bytes:
    """A regular file of at most `max_bytes`, or a clear user error (never a read of a
    device, a FIFO or a file too big to hold)."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise StagegptError(f"{what} {path} does not exist") from None
    except OSError as err:
        raise StagegptError(f"cannot read {what} {path}: {err.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise StagegptError(f"{what} {path} {_not_a_file(info.st_mode)}; refusing to read it")
    if info.st_size > max_bytes:
        raise StagegptError(f"{what} {path} is {info.st_size:,} bytes, more than the "
                            f"{max_bytes:,} such a file can be; it is not one")
    return path.read_bytes()


MAX_TEXT_BYTES = 16 << 20  # a prompt or a text to classify; models read far less of it


def read_text_stream(path: str | Path, what: str, max_bytes: int | None = None) -> str:
    """A file's UTF-8 text, read no further than `max_bytes` (MAX_TEXT_BYTES) + 1 bytes: a
    pipe or /dev/stdin works, and /dev/zero is refused instead of filling memory."""
    max_bytes = MAX_TEXT_BYTES if max_bytes is None else max_bytes
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise StagegptError(f"{what} {path} is over {max_bytes:,} bytes; give the text "
                                "the model is to read, which is far shorter")
        return data.decode("utf-8")
    except FileNotFoundError:
        raise StagegptError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or type(err).__name__
        raise StagegptError(f"cannot read {what} {path} as UTF-8 text ({reason})") from None


def read_text(path: str | Path, what: str = "file", max_bytes: int = MAX_JSON_BYTES) -> str:
    """`read_small_file` as UTF-8 text."""
    try:
        return read_small_file(path, what, max_bytes).decode("utf-8")
    except UnicodeDecodeError:
        raise StagegptError(f"{what} {path} is not UTF-8 text; it may be damaged") from None


# Every way json.loads can refuse text from outside: bad syntax or encoding, an integer
# beyond Python's 4,300-digit conversion limit (both ValueError), nesting past the stack.
JSON_ERRORS = (ValueError, RecursionError)


def json_problem(err: Exception) -> str:
    """What was wrong with text json.loads refused (one of JSON_ERRORS), in a few words."""
    if isinstance(err, RecursionError):
        return "nested too deeply"
    if isinstance(err, json.JSONDecodeError | UnicodeDecodeError):
        return str(err)
    return "an integer with more than 4,300 digits"


def read_json(path: str | Path, what: str = "file") -> Any:
    """Read JSON, turning a missing, oversized or malformed file into a clear user error."""
    data = read_small_file(path, what)
    try:
        return json.loads(data.decode("utf-8"))
    except JSON_ERRORS as err:
        reason = json_problem(err)
        raise StagegptError(
            f"{what} {path} is not valid JSON ({reason}); it may be truncated"
        ) from None
