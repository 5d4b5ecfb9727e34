"""wheelfarm as users install it: from its wheel, not from this checkout.

The wheel and the sdist are built from the checkout and must carry every file the proxy and the builder
read at run time (the admin page, the scripts the sandbox runs). The suite runs a second time as an
unprivileged user from a non-editable install (`make test-unprivileged`); there the installed package
itself is started and each packaged resource asked for over HTTP.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import httpx
import pytest
from fakes import free_port
from serve import wheelfarm_serve

import builder
import proxy

REPO = Path(__file__).resolve().parent.parent
# What runs from the package at run time: served, or copied into (or run inside) the sandbox.
RESOURCES = (
    "proxy/admin/admin.html",
    "proxy/py.typed",
    "builder/py.typed",
    "builder/launch.py",
    "builder/frontend.py",
    "builder/extract.py",
    "builder/importcheck.py",
)
INSTALLED = "site-packages" in (proxy.__file__ or "")


def test_the_wheel_and_the_sdist_carry_every_resource(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "build",
        "--no-isolation",
        "--wheel",
        "--sdist",
        "--outdir",
        str(tmp_path),
    ]
    subprocess.run([*command, str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("wheelfarm-*.whl")
    (sdist,) = tmp_path.glob("wheelfarm-*.tar.gz")
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
    with tarfile.open(sdist) as archive:
        in_sdist = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for resource in RESOURCES:
        assert resource in in_wheel, f"the wheel lacks {resource}"
        assert resource in in_sdist, f"the sdist lacks {resource}"
    assert {"README.md", "pyproject.toml"} <= in_sdist


@pytest.mark.skipif(not INSTALLED, reason="runs from the non-editable install of `make test-unprivileged`")
def test_the_installed_package_serves_every_resource(tmp_path: Path) -> None:
    for package in (proxy, builder):
        assert "site-packages" in (package.__file__ or ""), package.__file__
    folders = {"proxy": Path(proxy.__file__ or "").parent, "builder": Path(builder.__file__ or "").parent}
    for resource in RESOURCES:
        folder, name = resource.split("/", 1)
        assert (folders[folder] / name).is_file(), resource
    port = free_port()
    args = ["--port", str(port), "--cache-dir", str(tmp_path / "cache"), "--admin-enabled", "true"]
    with wheelfarm_serve([*args, "--logging-format", "json"], port, tmp_path / "server") as server:
        page = httpx.get(f"{server.url}/admin/", timeout=30)
        summary = httpx.get(f"{server.url}/admin/api/summary", timeout=30)
        builder_state = server.builder()
    assert page.status_code == 200
    assert "<title>" in page.text
    assert summary.status_code == 200
    assert builder_state["state"] == "ready", builder_state
    example = subprocess.run(
        [str(Path(sys.executable).parent / "wheelfarm"), "config", "example"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert example == (REPO / "config.example.toml").read_text()
