"""Test data from the llama-cpp-python 0.3.36 source distribution, fetched once and cached.

The sdist vendors llama.cpp, whose ``models/`` folder holds vocab-only GGUF files with expected
tokenizations and ``templates/*.jinja``, chat templates of real models.

Cache: ``$OXIDE_TEST_CACHE`` or ``~/.cache/oxide-tests``. The sdist is fetched with pip
(``pip download --no-deps --no-binary :all:``) and only ``vendor/llama.cpp/models/`` is unpacked.
Concurrent callers (pytest-xdist workers, several test runs) serialise on a lock file; the
unpack goes to a temporary folder that is renamed into place only when complete, so a crash never
leaves a half-unpacked tree behind.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PACKAGE = "llama-cpp-python"
VERSION = "0.3.36"
_MEMBER_PREFIX = "vendor/llama.cpp/models/"


def cache_dir() -> Path:
    """The folder that holds oxide's cached test downloads (created if missing)."""
    root = Path(os.environ.get("OXIDE_TEST_CACHE") or Path.home() / ".cache" / "oxide-tests")
    root.mkdir(parents=True, exist_ok=True)
    return root


def llama_cpp_models_dir() -> Path:
    """Path of ``vendor/llama.cpp/models/`` from the llama-cpp-python 0.3.36 sdist.

    Downloads (about 50 MB) and unpacks on first use; later calls return the cached folder.
    Raises ``RuntimeError`` naming the pip command when the sdist cannot be fetched.
    """
    root = cache_dir()
    final = root / f"{PACKAGE}-{VERSION}"
    models = final / _MEMBER_PREFIX
    if models.is_dir():
        return models
    with _locked(root / f"{PACKAGE}-{VERSION}.lock"):
        if models.is_dir():  # another process finished while we waited
            return models
        archive = _download(root)
        staging = Path(tempfile.mkdtemp(prefix=f".{PACKAGE}-unpack-", dir=root))
        try:
            extract_members(archive, staging, (_MEMBER_PREFIX,), _MEMBER_PREFIX)
            if final.exists():  # a stale folder without models/: replace it
                shutil.rmtree(final)
            os.rename(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return models


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download(root: Path) -> Path:
    """Return the cached sdist archive, fetching it with pip when absent."""
    name = f"{PACKAGE.replace('-', '_')}-{VERSION}.tar.gz"
    archive = root / name
    if archive.is_file():
        return archive
    with tempfile.TemporaryDirectory(prefix=".download-", dir=root) as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            f"{PACKAGE}=={VERSION}", "-d", tmp,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(Path(tmp).glob("*.tar.gz"))
        if result.returncode != 0 or len(found) != 1:
            raise RuntimeError(
                f"could not fetch the {PACKAGE}=={VERSION} sdist needed by the tests "
                f"(command: {' '.join(cmd)}; exit {result.returncode}): {result.stderr[-2000:]}\n"
                f"Check network access to PyPI, or place {name} in {root}."
            )
        os.replace(found[0], archive)  # same filesystem: atomic
    return archive


def extract_members(archive: Path, dest: Path, prefixes: tuple[str, ...], required: str) -> None:
    """Unpack the members of ``archive`` under any of ``prefixes`` (its top folder stripped) into ``dest``.

    Members with unsafe paths are refused; ``required`` (a folder or file path) must be among them.
    """
    with tarfile.open(archive, "r:gz") as tar:
        members = []
        for member in tar.getmembers():
            _, _, rel = member.name.partition("/")
            if ".." in Path(rel).parts or rel.startswith("/"):
                raise RuntimeError(f"{archive}: refusing unsafe member path {member.name!r}")
            if rel.startswith(prefixes) and (member.isfile() or member.isdir()):
                member.name = rel
                members.append(member)
        if not any(m.name.startswith(required) for m in members):
            raise RuntimeError(f"{archive} has no {required}; delete it and retry")
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.10.12
        tar.extractall(dest, members=members, **safe)
