"""Which interpreters a builder takes: real CPython binaries, never a script that stands for one."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from builder.interpreters import find_interpreter


def test_a_pyenv_shim_on_path_is_not_an_interpreter(tmp_path: Path) -> None:
    """pyenv's shims are shell scripts that pick the version from the environment; in the sandbox there is
    none, so a shim taken for python3.12 failed every 3.12 build ("pyenv: python3.12: command not found")."""
    shims = tmp_path / "shims"
    shims.mkdir()
    shim = shims / "python3.12"
    shim.write_text('#!/usr/bin/env bash\nexec pyenv exec "${0##*/}" "$@"\n')
    shim.chmod(0o755)
    environ = {"PATH": str(shims), "HOME": str(tmp_path / "home")}
    assert find_interpreter("3.12", environ=environ) is None
    real = Path(os.path.realpath(sys.executable))
    binaries = tmp_path / "bin"
    binaries.mkdir()
    (binaries / "python3.12").symlink_to(real)
    environ["PATH"] = f"{shims}{os.pathsep}{binaries}"
    assert find_interpreter("3.12", environ=environ) == real
    assert find_interpreter("3.12", {"3.12": str(shim)}, environ) is None  # configured, but a script
