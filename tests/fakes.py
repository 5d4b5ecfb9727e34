"""Test doubles, one copy each: the clock, and the proxy running in a thread against a fake upstream."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from loopwatch import LoopWatch
from prometheus_client.parser import text_string_to_metric_families
from servers import ServerThread

from proxy.settings import Settings
from proxy.web.app import AccessLog, create_app
from proxy.web.services import SERVICES, Services


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeClock:
    """A clock that moves only when a test says so (thread-safe: the proxy reads it from its own loop)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


PROXY_THREAD = "wheelfarm-proxy"  # the name of the thread that runs a ProxyServer's event loop


class ProxyServer(ServerThread):
    """wheelfarm's app (create_app, as `wheelfarm serve` builds it) on 127.0.0.1 in a thread."""

    def __init__(self, settings: Settings, clock: FakeClock) -> None:
        self.settings = settings
        self.clock = clock
        self._application = create_app(settings, clock=clock)
        super().__init__(
            self._application,
            port=settings.port,
            name=PROXY_THREAD,
            runner_options={"access_log_class": AccessLog},
        )

    @property
    def simple_url(self) -> str:
        return self.url + "/simple/"

    @property
    def services(self) -> Services:
        return self._application[SERVICES]

    def start(self) -> Self:
        """Started, and past the builder's start-up self-check (pages offer builds only after it)."""
        super().start()
        deadline = time.monotonic() + 120
        while self.health().get("builder", {}).get("state") == "checking":
            if time.monotonic() > deadline:
                raise TimeoutError("the builder's self-check did not finish in 120 s")
            time.sleep(0.02)
        return self

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/healthz", timeout=30) as response:
            answer: dict[str, Any] = json.loads(response.read())
        return answer

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample of /metrics, by its exposed name and exact labels (None: not exposed)."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=30) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return None

    def __enter__(self) -> Self:
        return self.start()


def watch_proxy_loop(*, cpu_limit: float = 0.1, blocked_limit: float = 0.2) -> LoopWatch:
    """Opt-in: a watchdog on the event loop of every ProxyServer running while it is entered (start-up too,
    for one started inside), recording each callback that held the loop more than ``cpu_limit`` seconds of
    CPU time or ``blocked_limit`` seconds asleep: see tests/loopwatch.py."""
    return LoopWatch(PROXY_THREAD, cpu_limit=cpu_limit, blocked_limit=blocked_limit)


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    """Poll ``condition`` until it holds; TimeoutError naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {seconds:g} s for {what}")
        time.sleep(0.05)


def proxy_settings(cache_dir: Path, upstream: str, **changes: Any) -> Settings:
    """Settings for a test proxy: a free port (builders reach the proxy there), short timeouts, and no
    builder pool unless a test asks for one (``builder_enabled=True``): its start-up self-check is a real
    sandboxed build, which tests of pages and files need not pay for."""
    base = Settings(
        port=free_port(),
        cache_dir=cache_dir,
        upstream_url=upstream,
        upstream_connect_timeout=2.0,
        upstream_read_timeout=2.0,
        logging_format="json",
        builder_enabled=False,
        builder_reproduce=False,  # second builds only where a test asks (tests/test_reproducibility.py)
    )
    return dataclasses.replace(base, **changes)
