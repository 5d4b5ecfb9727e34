"""The real `wheelfarm serve` command as a subprocess: start-up, settings, a pip install, the request log."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
from clients import TOOLS_BIN, Client, install
from fake_upstream import FakeIndex, FakeUpstreamServer
from fakes import free_port

WHEELFARM: Final = TOOLS_BIN / "wheelfarm"
REQUEST_LOG_KEYS: Final = {"method", "path", "status", "bytes", "duration_ms", "cache", "request_id"}
START_TIMEOUT: Final = 30.0


def server_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment: no WHEELFARM_* (or anything else) from the machine running the tests."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        **(extra or {}),
    }


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    url: str
    stderr_path: Path

    @property
    def simple_url(self) -> str:
        return self.url + "/simple/"

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: signal.Signals = signal.SIGINT) -> int:
        """Ask the server to stop, as Ctrl-C or a service manager would; return its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"wheelfarm did not stop on {sig.name}:\n{self.stderr()}") from None

    def log_lines(self) -> list[dict[str, Any]]:
        """Every stderr line, parsed as JSON (so a line that is not JSON fails the test)."""
        lines = []
        for line in self.stderr().splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                pytest.fail(f"stderr line is not JSON: {line!r}\n{self.stderr()}")
        return lines

    def request_lines(self) -> list[dict[str, Any]]:
        return [line for line in self.log_lines() if line.get("event") == "request"]


@contextlib.contextmanager
def wheelfarm_serve(
    args: Sequence[str], port: int, workdir: Path, env: Mapping[str, str] | None = None
) -> Iterator[RunningServer]:
    """Run `wheelfarm serve ARGS` until the block ends; yield once /healthz answers on `port`."""
    workdir.mkdir(parents=True, exist_ok=True)
    stderr_path = workdir / "wheelfarm.stderr"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [str(WHEELFARM), "serve", *args],
            env=server_env(workdir / "home", env),
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    server = RunningServer(process, f"http://127.0.0.1:{port}", stderr_path)
    try:
        wait_healthy(server)
        yield server
    finally:
        server.stop()


def wait_healthy(server: RunningServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"wheelfarm exited {server.process.returncode}:\n{server.stderr()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(server.url + "/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise AssertionError(f"wheelfarm did not answer /healthz within {START_TIMEOUT} s:\n{server.stderr()}")


def file_path(index: FakeIndex, filename: str, suffix: str = "") -> str:
    project, dist = index.find(filename) or pytest.fail(f"{filename} is not on the fake index")
    return f"/files/{project}/{dist.sha256}/{filename}{suffix}"


def test_serve_installs_and_logs_one_json_line_per_request(
    fake_upstream: FakeUpstreamServer, fake_index: FakeIndex, tmp_path: Path
) -> None:
    port = free_port()
    args = [
        "--port",
        str(port),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--upstream",
        fake_upstream.simple_url,
        "--logging-format",
        "json",
    ]
    wheel = "tinypure-2.0-py3-none-any.whl"
    with wheelfarm_serve(args, port, tmp_path / "server") as server:
        install(Client.PIP, server.simple_url, ["tinydep"], tmp_path / "pip").check()
        again = httpx.get(
            server.url + file_path(fake_index, wheel), headers={"X-Request-ID": "cli-test-again"}
        )
        assert again.status_code == 200
        assert again.headers["X-Request-ID"] == "cli-test-again"
        assert server.stop(signal.SIGINT) == 0

    lines = server.request_lines()
    for line in lines:
        assert line.keys() >= REQUEST_LOG_KEYS, line
        assert isinstance(line["bytes"], int)
        assert isinstance(line["duration_ms"], int | float)
        assert line["duration_ms"] >= 0
    # One line per request: every request id appears once.
    ids = Counter(line["request_id"] for line in lines)
    assert all(count == 1 for count in ids.values()), ids
    # pip asked for two pages, two PEP 658 metadata files and two wheels, each once; all logged as misses.
    by_pip = [line for line in lines if line.get("user_agent", "").startswith("pip/")]
    expected = [
        "/simple/tinydep/",
        "/simple/tinypure/",
        file_path(fake_index, "tinydep-1.0-py2.py3-none-any.whl", ".metadata"),
        file_path(fake_index, wheel, ".metadata"),
        file_path(fake_index, "tinydep-1.0-py2.py3-none-any.whl"),
        file_path(fake_index, wheel),
    ]
    assert sorted(line["path"] for line in by_pip) == sorted(expected)
    for line in by_pip:
        assert (line["method"], line["status"], line["cache"]) == ("GET", 200, "miss"), line
    first, later = (line for line in lines if line["path"] == file_path(fake_index, wheel))
    assert first["bytes"] == len(fake_index.file(wheel).content)  # streamed by sendfile: the body, counted
    assert (later["request_id"], later["cache"], later["status"]) == ("cli-test-again", "hit", 200)
    assert "Traceback" not in server.stderr()


@pytest.mark.parametrize(
    ("args", "env", "setting"),
    [
        (["--port", "notanumber"], {}, "port"),
        ([], {"WHEELFARM_SERVER_PORT": "notanumber"}, "WHEELFARM_SERVER_PORT"),
    ],
    ids=["flag", "environment"],
)
def test_bad_port_exits_2_naming_the_setting(
    tmp_path: Path, args: list[str], env: dict[str, str], setting: str
) -> None:
    completed = subprocess.run(
        [str(WHEELFARM), "serve", "--cache-dir", str(tmp_path / "cache"), *args],
        env=server_env(tmp_path / "home", env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 2
    # One line, no traceback, e.g. "wheelfarm: flag for port: 'notanumber' is not a valid int".
    assert completed.stderr.startswith("wheelfarm: ")
    assert completed.stderr.count("\n") == 1
    assert setting in completed.stderr
    assert "'notanumber' is not a valid int" in completed.stderr


def test_port_from_the_environment(fake_upstream: FakeUpstreamServer, tmp_path: Path) -> None:
    port = free_port()
    env = {"WHEELFARM_SERVER_PORT": str(port)}
    args = ["--cache-dir", str(tmp_path / "cache"), "--upstream", fake_upstream.simple_url]
    with wheelfarm_serve(args, port, tmp_path / "server", env) as server:
        page = httpx.get(
            server.simple_url + "tinypure/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
        )
        assert page.status_code == 200
        assert page.json()["name"] == "tinypure"
        assert server.stop(signal.SIGTERM) == 0
    # stderr is not a terminal, so the default format ("auto") is JSON too.
    (starting,) = [line for line in server.log_lines() if line["event"] == "starting"]
    assert starting["port"] == port
