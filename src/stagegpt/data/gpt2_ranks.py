"""GPT-2's BPE table (tiktoken's r50k_base), found locally or fetched once, always verified.

Sources, in order: the file named by $STAGEGPT_GPT2_RANKS; stagegpt's cache; tiktoken's
own cache; the `openai-whisper` source package, which ships a byte-identical copy
(`whisper/assets/gpt2.tiktoken`) that pip can fetch. Every source is checked against the
sha256 that tiktoken pins for r50k_base.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from stagegpt.data.registry import cache_dir, fetch_from_sdist, sha256_bytes, writable_cache_dir
from stagegpt.errors import StagegptError
from stagegpt.fileio import atomic_file, read_small_file

# GPT-2's BPE table (tiktoken's r50k_base), pinned by the sha256 tiktoken itself checks.
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
WHISPER_PACKAGE = ("openai-whisper", "20250625")  # ships it as whisper/assets/gpt2.tiktoken
RANKS_ENV = "STAGEGPT_GPT2_RANKS"


MAX_RANKS_BYTES = 4 << 20  # the table is 0.8 MB


def read_table(path: Path, source: str) -> bytes:
    """The bytes of a GPT-2 table that `source` ($STAGEGPT_GPT2_RANKS, --gpt2-ranks, the
    cache) names, read only if it is a regular file of a table's size, and verified."""
    advice = "point it at r50k_base.tiktoken or whisper's gpt2.tiktoken"
    try:
        data = read_small_file(path, f"{source} file", MAX_RANKS_BYTES)
    except StagegptError as err:
        raise StagegptError(f"{err}; {advice}") from None
    if sha256_bytes(data) != R50K_SHA256:
        raise StagegptError(f"{source} file {path} is not GPT-2's r50k_base table (sha256 "
                            f"should be {R50K_SHA256[:12]}...); {advice}")
    return data


def _tiktoken_cache_dirs() -> list[Path]:
    dirs = [os.environ.get("TIKTOKEN_CACHE_DIR"), os.environ.get("DATA_GYM_CACHE_DIR"),
            os.path.join(tempfile.gettempdir(), "data-gym-cache")]
    return [Path(d) for d in dirs if d]


def _from_tiktoken_cache() -> bytes | None:
    """tiktoken names cached files by a hash of their URL; recognize ours by content."""
    for directory in _tiktoken_cache_dirs():
        if not directory.is_dir():
            continue
        for path in directory.iterdir():
            try:
                small = path.is_file() and 500_000 < path.stat().st_size < 2_000_000
            except OSError:
                continue
            if small and not path.name.endswith(".tmp"):
                data = path.read_bytes()
                if sha256_bytes(data) == R50K_SHA256:
                    return data
    return None


def gpt2_ranks_path() -> Path:
    """A local, verified copy of GPT-2's BPE ranks, fetching it once if need be."""
    explicit = os.environ.get(RANKS_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        read_table(path, f"${RANKS_ENV}")
        return path
    cached = cache_dir() / "gpt2.tiktoken"
    with contextlib.suppress(StagegptError):
        read_table(cached, "cached")
        return cached
    data = _from_tiktoken_cache()
    if data is None:
        try:
            members = fetch_from_sdist(*WHISPER_PACKAGE,
                                       lambda n: n.endswith("/whisper/assets/gpt2.tiktoken"),
                                       "GPT-2's tokenizer table")
        except StagegptError as err:
            raise StagegptError(f"{err}; or get r50k_base.tiktoken some other way and set "
                                f"{RANKS_ENV}=/path/to/it") from None
        data = next(iter(members.values()), b"")
        if sha256_bytes(data) != R50K_SHA256:
            raise StagegptError(f"the gpt2.tiktoken in {'=='.join(WHISPER_PACKAGE)} does not "
                                f"match tiktoken's r50k_base sha256; set {RANKS_ENV} to a "
                                "verified copy instead")
    writable_cache_dir()
    with atomic_file(cached) as f:
        f.write(data)
    return cached
