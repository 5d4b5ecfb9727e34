"""Finding a real CPython of each version on the builder host: configured paths, pyenv, then PATH.

pyenv's shims only resolve the global version, so its versions folder is searched directly, and a shim on
PATH is not taken for an interpreter (only executables are). A python on PATH that is a virtualenv's link
stands for the interpreter it links to.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path


def find_interpreter(
    version: str, configured: Mapping[str, str] | None = None, environ: Mapping[str, str] | None = None
) -> Path | None:
    """A python executable for ``version`` ("3.12"), or None when the host has none."""
    if configured and version in configured:
        return _base_interpreter(Path(configured[version]))
    env = os.environ if environ is None else environ
    for root in _pyenv_roots(env):
        found = _from_pyenv(root / "versions", version)
        if found is not None:
            return found
    for folder in env.get("PATH", "").split(os.pathsep):
        on_path = shutil.which(f"python{version}", path=folder) if folder else None
        found = _base_interpreter(Path(on_path)) if on_path else None
        if found is not None:
            return found
    return None


def _base_interpreter(path: Path) -> Path | None:
    """The real interpreter behind ``path`` (a venv's python is a link to one): builds make their own
    environments from it, and the sandbox mounts its installation, never somebody's virtualenv."""
    if not _executable(path):
        return None
    real = Path(os.path.realpath(path))
    if (real.parent.parent / "pyvenv.cfg").exists():
        return None  # a copy inside a virtualenv (venv --copies): not an installation of its own
    return real


def _pyenv_roots(env: Mapping[str, str]) -> list[Path]:
    roots = [Path(env["PYENV_ROOT"])] if env.get("PYENV_ROOT") else []
    roots.append(Path(env.get("HOME", "/root")) / ".pyenv")
    return [root for root in roots if (root / "versions").is_dir()]


def _from_pyenv(versions: Path, version: str) -> Path | None:
    pattern = re.compile(rf"^{re.escape(version)}\.(\d+)$")  # final releases only, newest patch first
    matches = sorted(
        (int(m[1]), entry) for entry in versions.iterdir() if (m := pattern.match(entry.name)) is not None
    )
    for _, entry in reversed(matches):
        path = entry / "bin" / f"python{version}"
        if _executable(path):
            return path
    return None


def _executable(path: Path) -> bool:
    """An executable binary: not a script such as pyenv's shims, which resolve the version through the
    environment (the sandbox has none, so a shim fails there: "pyenv: python3.12: command not found")."""
    if not (path.is_file() and os.access(path, os.X_OK)):
        return False
    try:
        with path.open("rb") as handle:
            return handle.read(4) == b"\x7fELF"
    except OSError:
        return False
