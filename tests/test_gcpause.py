"""Collections pause while bulk jobs run, nested or concurrent, and come back as they were."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from proxy.pages.gcpause import collections_paused


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    if enabled:
        gc.enable()
    else:
        gc.disable()


def test_collections_pause_while_any_bulk_job_runs() -> None:
    gc.enable()
    entered, release = threading.Event(), threading.Event()

    def other_job() -> None:
        with collections_paused():
            entered.set()
            release.wait(10)

    worker = threading.Thread(target=other_job)
    with collections_paused():
        assert not gc.isenabled()
        worker.start()
        entered.wait(10)
    assert not gc.isenabled()  # the other job still runs
    release.set()
    worker.join(10)
    assert gc.isenabled()


def test_small_jobs_leave_collections_alone_and_a_disabled_collector_stays_disabled() -> None:
    gc.enable()
    with collections_paused(bulk=False):
        assert gc.isenabled()
    gc.disable()
    with collections_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()
