"""How the tests (and bench/, which imports this module) run pip and uv: a clean environment, a fresh
virtual environment, the install command. Standard library only: bench/ runs it from a venv of its own,
without pytest.

Every environment is built from scratch: no PIP_* or UV_* variable, no pip or uv config file, no client
cache, HOME in a temporary folder. The machine's own pip configuration (extra indexes, find-links,
constraints) must never decide what gets installed. pip is the one in the ``tools`` virtualenv (the tests'
own by default), pointed at the target with ``--python``; uv is the ``uv`` next to it, with ``--python``
too, so neither needs the network to set itself up.
"""

from __future__ import annotations

import enum
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

# The test virtualenv's bin folder: its python runs pip (>= 22.3 for --python), and uv lives next to it.
TOOLS_BIN: Final = Path(sys.executable).parent
UV: Final = TOOLS_BIN / "uv"


class Client(enum.Enum):
    PIP = "pip"
    UV = "uv"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def clean_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment from scratch: PATH, a private HOME and TMPDIR, no pip or uv configuration at all."""
    home.mkdir(parents=True, exist_ok=True)
    tmp = home / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "NO_COLOR": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        # pip reads no config file at all when this is os.devnull.
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
        # uv: no uv.toml / pyproject settings, never fetch an interpreter.
        "UV_NO_CONFIG": "1",
        "UV_PYTHON_DOWNLOADS": "never",
    }
    env.update(extra or {})
    return env


def make_venv(
    path: Path, env: Mapping[str, str], *, interpreter: Path | None = None, timeout: float = 60.0
) -> Path:
    """A new, empty virtualenv (no pip inside) at `path`, of `interpreter` (default: the one running the
    tests)."""
    subprocess.run(
        [str(interpreter or sys.executable), "-m", "venv", "--without-pip", str(path)],
        env=dict(env),
        capture_output=True,
        check=True,
        timeout=timeout,
    )
    return path


def install_command(
    client: Client,
    python: Path,
    source: Sequence[str],
    requirements: Sequence[str],
    *,
    tools: Path = TOOLS_BIN,
) -> list[str]:
    """The argv that installs ``requirements`` into the venv of ``python`` from ``source`` only
    (``["--index-url", URL]``, or ``["--no-index", "--find-links", FOLDER]``), with the pip or uv of
    ``tools``."""
    if client is Client.PIP:
        return [
            str(tools / "python"),
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-cache-dir",
            "--progress-bar",
            "off",
            *source,
            *requirements,
        ]
    return [
        str(tools / "uv"),
        "pip",
        "install",
        "--no-config",
        "--no-cache",
        "--link-mode",
        "copy",
        "--python",
        str(python),
        *source,
        *requirements,
    ]
