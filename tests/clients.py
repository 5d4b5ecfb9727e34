"""Run the real pip and uv against an index URL, as subprocesses in a clean environment.

Every install gets a fresh target virtual environment (made with `python -m venv --without-pip`) and
an environment built from scratch: no PIP_* or UV_* variable, no pip or uv config file, no client cache,
HOME in a temporary folder. The machine's own pip configuration (extra indexes, find-links,
constraints) must never decide what a test installs. pip is the one in this project's virtualenv,
pointed at the target with `--python`; uv is the `uv` next to it, with `--python` too, so neither
needs the network to set itself up.

    result = install(Client.PIP, proxy.simple_url, ["tinydep"], tmp_path)
    result.check()
    assert result.installed() == {"tinydep": "1.0", "tinypure": "2.0"}
"""

from __future__ import annotations

import enum
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Self

import pytest
from packaging.utils import canonicalize_name

# The test virtualenv's bin folder: its python runs pip (>= 22.3 for --python), and uv lives next to it.
TOOLS_BIN: Final = Path(sys.executable).parent
UV: Final = TOOLS_BIN / "uv"
DEFAULT_TIMEOUT: Final = 120.0

_LIST_DISTRIBUTIONS: Final = (
    "import importlib.metadata, json; "
    "print(json.dumps({d.metadata['Name']: d.version for d in importlib.metadata.distributions()}))"
)


class Client(enum.Enum):
    PIP = "pip"
    UV = "uv"


# Run a test once with each installer: `@each_client` on a test that takes a `client: Client` argument.
each_client = pytest.mark.parametrize("client", list(Client), ids=[client.value for client in Client])


@dataclass(frozen=True)
class InstallResult:
    """What one client run did: its exit status and output, and the virtualenv it installed into."""

    client: Client
    command: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    venv: Path
    env: Mapping[str, str]
    duration: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def python(self) -> Path:
        return venv_python(self.venv)

    def check(self) -> Self:
        """This result, or AssertionError carrying the whole output when the client failed."""
        if self.returncode != 0:
            raise AssertionError(f"{self.describe()} failed:\n{self.output}")
        return self

    def describe(self) -> str:
        return f"{self.client.value} ({' '.join(self.command)}) exited {self.returncode}"

    def installed(self) -> dict[str, str]:
        """Normalised distribution name -> version of everything installed in the target venv."""
        listing = self.run_python(_LIST_DISTRIBUTIONS)
        raw: dict[str, str] = json.loads(listing)
        return {canonicalize_name(name): version for name, version in sorted(raw.items())}

    def run_python(self, code: str, *, timeout: float = 30.0) -> str:
        """Run `code` with the target venv's python (isolated mode); return its stdout, raise if it fails."""
        completed = subprocess.run(
            [str(self.python), "-I", "-c", code],
            env=dict(self.env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if completed.returncode != 0:
            raise AssertionError(f"python -c {code!r} failed in {self.venv}:\n{completed.stderr}")
        return completed.stdout


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


def install_command(client: Client, python: Path, index_url: str, requirements: Sequence[str]) -> list[str]:
    """The argv that installs `requirements` into the venv of `python` from `index_url` only."""
    if client is Client.PIP:
        return [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-cache-dir",
            "--progress-bar",
            "off",
            "--index-url",
            index_url,
            *requirements,
        ]
    return [
        str(UV),
        "pip",
        "install",
        "--no-config",
        "--no-cache",
        "--link-mode",
        "copy",
        "--python",
        str(python),
        "--index-url",
        index_url,
        *requirements,
    ]


def install(
    client: Client,
    index_url: str,
    requirements: Sequence[str],
    workdir: Path,
    *,
    extra_args: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> InstallResult:
    """Install `requirements` with `client` from `index_url` into a fresh venv under `workdir`.

    `workdir` must not be shared with another install: it holds the venv, HOME and TMPDIR. The result
    is returned whatever the exit status; call `.check()` to require success.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    env = clean_env(workdir / "home", extra_env)
    venv = make_venv(workdir / "venv", env)
    command = [*install_command(client, venv_python(venv), index_url, requirements), *extra_args]
    started = time.monotonic()
    completed = subprocess.run(
        command,
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return InstallResult(
        client=client,
        command=tuple(command),
        returncode=completed.returncode,
        stdout=completed.stdout,
        stderr=completed.stderr,
        venv=venv,
        env=env,
        duration=time.monotonic() - started,
    )
