"""Pausing CPython's cyclic garbage collector while a thread parses or renders a very large page.

Such a job allocates millions of objects that all stay alive. CPython 3.11 runs a full collection whenever a
quarter of the old generation is new, so it runs again and again during the job, each time walking the
whole heap with the GIL held: every other thread, the event loop included, stops for 0.1-0.3 s each time
(measured on a 200,000-file page: 15 such pauses, health checks delayed 0.5 s; with collections paused
0.13 s). While any bulk job runs, automatic collections wait; the next one after it runs once. Reference
counting frees everything acyclic as usual, so only cyclic garbage waits, and only for the job's duration.
Used only for pages past ``BULK_BYTES`` or ``BULK_FILES``: a busy proxy parsing small pages all the time
must not keep collections off.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

BULK_BYTES = 4 << 20
BULK_FILES = 20_000

_lock = threading.Lock()
_running = 0
_was_enabled = True


@contextmanager
def collections_paused(bulk: bool = True) -> Iterator[None]:
    """Automatic garbage collections wait while the block runs (if ``bulk``); nested and concurrent uses
    are counted, and collections come back as they were when the last one ends."""
    global _running, _was_enabled
    if not bulk:
        yield
        return
    with _lock:
        if _running == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _running += 1
    try:
        yield
    finally:
        with _lock:
            _running -= 1
            if _running == 0 and _was_enabled:
                gc.enable()
