"""What the cluster tests share: the ``wheelfarm`` command against a database, builder tokens, the
arguments of a cluster's serve process, and waiting until a process has read a live builder."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from fake_upstream import FakeUpstreamServer
from serve import WHEELFARM, RunningServer, server_env


def wheelfarm(*args: str, database: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(WHEELFARM), *args],
        env=server_env(home, {"WHEELFARM_CLUSTER_DATABASE": database}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def cluster_args(
    port: int, cache: Path, store: Path, upstream: FakeUpstreamServer, builds: bool
) -> list[str]:
    return [
        "--port", str(port), "--cache-dir", str(cache), "--upstream", upstream.simple_url,
        "--builder-enabled", "yes" if builds else "no", "--cluster-store", str(store),
        "--admin-enabled", "yes", "--logging-format", "json", "--builder-timeout", "120",
    ]  # fmt: skip


def learns_of_builders(server: RunningServer, timeout: float = 30.0) -> None:
    """A process without a builder of its own offers builds once it reads a live one from the database."""
    deadline = time.monotonic() + timeout
    while server.builder()["state"] != "ready":
        assert time.monotonic() < deadline, server.builder()
        time.sleep(0.2)


def add_token(database: str, name: str, home: Path) -> str:
    run = wheelfarm("db", "add-token", name, database=database, home=home)
    assert run.returncode == 0, run.stderr
    token = run.stdout.strip()
    assert token.startswith("wfb_")
    return token


def upload_result(
    farm_url: str, auth: dict[str, str], job: dict[str, Any], report: dict[str, Any], wheel: Path
) -> httpx.Response:
    """What a remote builder sends when its build of ``job`` (a claim's answer) ended: report and wheel."""
    return httpx.post(
        f"{farm_url}/cluster/api/jobs/{job['sdist_sha256']}/{job['target']}/result",
        headers=auth,
        files={"report": ("report.json", orjson.dumps(report)), "wheel": (wheel.name, wheel.read_bytes())},
        timeout=60,
    )
