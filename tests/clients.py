"""Run the real pip and uv against an index URL, as subprocesses in a clean environment (tests/clientenv.py
says how), each install into a fresh virtual environment made with `python -m venv --without-pip`.

    result = install(Client.PIP, proxy.simple_url, ["tinydep"], tmp_path)
    result.check()
    assert result.installed() == {"tinydep": "1.0", "tinypure": "2.0"}
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Self

import pytest
from clientenv import Client, clean_env, install_command, make_venv, venv_python
from packaging.utils import canonicalize_name

DEFAULT_TIMEOUT: Final = 120.0

_LIST_DISTRIBUTIONS: Final = (
    "import importlib.metadata, json; "
    "print(json.dumps({d.metadata['Name']: d.version for d in importlib.metadata.distributions()}))"
)


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
    command = [
        *install_command(client, venv_python(venv), ["--index-url", index_url], requirements),
        *extra_args,
    ]
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
