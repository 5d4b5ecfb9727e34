"""Lock files made through the proxy: ``uv lock`` on one Python, ``uv sync`` on others, farm wheels for all.

uv says in its User-Agent that it is locking; its page then carries every target the farm serves on its
platform, the newest release built for each first, so the lock names the built wheels with their sha256.
A sync on another Python installs the farm's wheel from the lock, without building anything.
"""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest
from clientenv import UV, clean_env
from fakes import ProxyServer
from hostile import needs_bwrap

from builder.interpreters import find_interpreter

pytestmark = needs_bwrap

PROJECT = """\
[project]
name = "locker"
version = "0"
requires-python = ">=3.8"
dependencies = ["tinypure==3.0"]
"""


def _uv(
    args: list[str], project: Path, home: Path, *extra_env: tuple[str, str]
) -> subprocess.CompletedProcess[str]:
    env = clean_env(home, dict(extra_env))
    return subprocess.run(
        [str(UV), *args, "--no-config"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_a_uv_lock_names_a_farm_wheel_with_its_hash_for_every_python(
    builder_proxy: ProxyServer, tmp_path: Path
) -> None:
    pythons = {version: find_interpreter(version) for version in ("3.11", "3.12")}
    if any(path is None for path in pythons.values()):
        pytest.skip(f"needs CPython 3.11 and 3.12 here: {pythons}")
    project = tmp_path / "locker"
    project.mkdir()
    (project / "pyproject.toml").write_text(PROJECT)
    index = ("UV_DEFAULT_INDEX", builder_proxy.simple_url)

    locked = _uv(["lock", "--python", str(pythons["3.11"])], project, tmp_path / "home-lock", index)
    assert locked.returncode == 0, locked.stderr
    lock = tomllib.loads((project / "uv.lock").read_text())
    (tinypure,) = [p for p in lock["package"] if p["name"] == "tinypure"]
    wheels = tinypure.get("wheels", [])
    assert wheels, f"the lock names no wheel: {tinypure}"
    assert all(w.get("hash", "").startswith("sha256:") for w in wheels), wheels
    assert all("/built/" in w["url"] for w in wheels), "the lock names build-pending links, not built wheels"

    synced = _uv(
        ["sync", "--frozen", "--python", str(pythons["3.12"])], project, tmp_path / "home-sync", index,
        ("UV_PROJECT_ENVIRONMENT", str(tmp_path / "venv-312")),
    )  # fmt: skip
    assert synced.returncode == 0, synced.stderr
    assert "Building tinypure" not in synced.stderr  # the farm's wheel, from the lock
    venv = tmp_path / "venv-312"
    code = "import tinypure, sys; print(tinypure.hello(), sys.version_info[:2])"
    check = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True
    )
    assert check.stdout.strip() == "tinypure 3.0 (3, 12)"
