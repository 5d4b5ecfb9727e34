"""``wheelfarm serve --processes N``: N serving processes on one port, all cores of a host.

Each process is a whole proxy (its own event loop, page layers and memory caches) listening with
SO_REUSEPORT, so the kernel spreads new connections among them. They share the cache folder: the page store
is SQLite (safe for several processes), files are downloaded once among them (proxy/storage/gate.py), and
builds go through the cluster's database, with only the first process running this host's builder (a
second pool would compete for the same build uids and work folder). This supervisor forks them, forwards
SIGINT and SIGTERM, and starts again a process that dies, unless it keeps dying at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Callable

import structlog

from proxy.settings import Settings

log = structlog.get_logger(__name__)

QUICK_DEATH_SECONDS = 5.0  # a process that dies sooner after its start counts as failing to start
QUICK_DEATHS_ALLOWED = 3


def run_processes(settings: Settings, serve: Callable[[Settings], None]) -> None:
    children: dict[int, tuple[int, float]] = {}  # pid -> (index, started at)
    stopping = False
    quick_deaths = 0

    def start(index: int) -> None:
        each = dataclasses.replace(settings, builder_enabled=settings.builder_enabled and index == 0)
        pid = os.fork()
        if pid == 0:  # the child: a whole proxy of its own
            code = 0
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                serve(each)
            except BaseException:
                log.exception("serving_process_failed", index=index)
                code = 1
            finally:
                os._exit(code)
        children[pid] = (index, time.monotonic())

    def forward(signum: int, _: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    for index in range(settings.server_processes):
        start(index)
    log.info("processes_started", processes=settings.server_processes, pids=sorted(children))
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        index, started = children.pop(pid, (-1, 0.0))
        if stopping or index < 0:
            continue
        code = os.waitstatus_to_exitcode(status)
        quick = time.monotonic() - started < QUICK_DEATH_SECONDS
        quick_deaths = quick_deaths + 1 if quick else 0
        log.error(
            "serving_process_died",
            index=index,
            pid=pid,
            exit=code,
            restarting=quick_deaths < QUICK_DEATHS_ALLOWED,
        )
        if quick_deaths >= QUICK_DEATHS_ALLOWED:
            forward(signal.SIGTERM, None)
            continue
        start(index)
