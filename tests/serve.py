"""The real `wheelfarm serve` command as a subprocess, for tests of the command line and of the process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
from clientenv import TOOLS_BIN

WHEELFARM: Final = TOOLS_BIN / "wheelfarm"
START_TIMEOUT: Final = 30.0


def server_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment: no WHEELFARM_* (or anything else) from the machine running the tests. Second
    builds (reproducibility verdicts) are off unless a test turns them on: they would double every test's
    build work, and tests/test_reproducibility.py covers them."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "WHEELFARM_BUILDER_REPRODUCE": "no",
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

    def builder(self, timeout: float = 120.0) -> dict[str, Any]:
        """The builder's state from /healthz, once its start-up self-check is over."""
        deadline = time.monotonic() + timeout
        while True:
            state: dict[str, Any] = httpx.get(self.url + "/healthz", timeout=10).json()["builder"]
            if state["state"] != "checking" or time.monotonic() > deadline:
                return state
            time.sleep(0.05)

    def request_lines(self) -> list[dict[str, Any]]:
        return [line for line in self.log_lines() if line.get("event") == "request"]


@contextlib.contextmanager
def wheelfarm_serve(
    args: Sequence[str],
    port: int,
    workdir: Path,
    env: Mapping[str, str] | None = None,
    wrapper: Sequence[str] = (),
    host: str = "127.0.0.1",
) -> Iterator[RunningServer]:
    """Run `wheelfarm serve ARGS` (under ``wrapper``, a command prefix) until the block ends; yield once
    /healthz answers on `port`."""
    workdir.mkdir(parents=True, exist_ok=True)
    stderr_path = workdir / "wheelfarm.stderr"
    with stderr_path.open("ab") as stderr:
        process = subprocess.Popen(
            [*wrapper, str(WHEELFARM), "serve", *args],
            env=server_env(workdir / "home", env),
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    server = RunningServer(process, f"http://{host}:{port}", stderr_path)
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
