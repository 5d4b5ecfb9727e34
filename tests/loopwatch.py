"""A watchdog on asyncio event loops: which callbacks held their loop too long, and what they were doing.

Every callback a loop runs (a task's step, a socket's readiness, a timer, ``call_soon``) goes through
``asyncio.Handle._run``. While a LoopWatch is entered that method is wrapped, and on threads of the watched
name (every other thread goes straight through) the wrapper measures each callback's

- CPU time: the thread's own (``time.thread_time``), less the garbage collections it ran. Work done on the
  loop. Other work on the machine (two cores shared with pytest-xdist and sandboxed builds) does not add to
  it, so its limit can be tight.
- blocked time: wall time, less CPU time, less the time the kernel kept the thread runnable but off every
  core (the run delay of /proc/thread-self/schedstat), less the collections other threads ran meanwhile
  (they hold the GIL). What is left is the thread asleep inside the callback: time.sleep, blocking file or
  socket I/O, a lock, or the GIL held by another thread, which a busy thread gives up every
  ``sys.getswitchinterval()`` (5 ms). The count of the thread's sleeps tells one from the other: a blocking
  call is one long sleep, GIL hand-offs are many short ones.

A callback over either limit is kept as a SlowCallback. While a callback runs longer than half the smaller
limit, a sampler thread reads the loop thread's stack every few milliseconds, so a slow callback names the
lines it was busy in, not only the task it belonged to (every request runs in aiohttp's RequestHandler.start).
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, ClassVar, Self

REPO = Path(__file__).resolve().parent.parent
SAMPLE_EVERY = 0.005  # seconds between two looks at a long callback's stack
SHOWN_LINES = 3  # the most sampled lines a SlowCallback names
OFF_CORE = 0.001  # seconds off its core under which a callback's run delay is not worth reading

Run = Callable[[asyncio.Handle], None]


@dataclass(frozen=True)
class SlowCallback:
    callback: str  # the task's coroutine, or the function the loop called
    label: str  # what the test was doing when it started (LoopWatch.label)
    cpu: float
    blocked: float
    wall: float
    # Times the thread went to sleep: one long sleep is a blocking call; hundreds of short ones, many calls
    # that each gave up the GIL and waited to get it back (a busy thread elsewhere lengthens each wait).
    sleeps: int
    # Where it was busy: sampled lines, most often first; without samples, where its task went on to wait.
    lines: tuple[str, ...]

    def __str__(self) -> str:
        where = "; ".join(self.lines) or "(no sample)"
        return (
            f"{self.callback} while {self.label}: CPU {self.cpu:.3f} s, blocked {self.blocked:.3f} s in "
            f"{self.sleeps} sleeps (wall {self.wall:.3f} s), busy in {where}"
        )


@dataclass(eq=False)
class _Running:
    """The callback a watched thread runs now (read by the sampler thread)."""

    handle: asyncio.Handle
    label: str
    started: float  # time.perf_counter()
    sleeps: int  # the thread's voluntary context switches so far
    samples: Counter[str] = field(default_factory=Counter)


class LoopWatch:
    """Records the callbacks of loops run by threads named ``thread_name`` that exceeded ``cpu_limit`` or
    ``blocked_limit`` seconds. A context manager; one at a time."""

    _active: ClassVar[LoopWatch | None] = None

    def __init__(self, thread_name: str, *, cpu_limit: float = 0.1, blocked_limit: float = 0.2) -> None:
        self.thread_name = thread_name
        self.cpu_limit = cpu_limit
        self.blocked_limit = blocked_limit
        self.slow: list[SlowCallback] = []
        self.callbacks = 0  # callbacks run by watched threads
        self.most_cpu: SlowCallback | None = None  # the callback with the most CPU time, slow or not
        self.most_blocked: SlowCallback | None = None
        self._label = "starting"
        self._sample_after = min(cpu_limit, blocked_limit) / 2
        self._running: dict[int, _Running] = {}  # by threading.get_ident()
        self._local = threading.local()  # a watched thread's schedstat file
        self._schedstat_fds: list[int] = []
        self._gc_started: dict[int, float] = {}
        self._gc_by_thread: dict[int, float] = {}
        self._gc_total = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        self._original: Run | None = None

    def label(self, text: str) -> None:
        """Name what the test does from now on; slow callbacks carry the name."""
        self._label = text

    def report(self) -> str:
        """One line per slow callback (empty: none)."""
        with self._lock:
            return "\n".join(str(slow) for slow in self.slow)

    def __enter__(self) -> Self:
        if LoopWatch._active is not None:
            raise RuntimeError("another LoopWatch is watching")
        LoopWatch._active = self
        original: Run = asyncio.Handle._run
        self._original = original
        name = self.thread_name

        def run(handle: asyncio.Handle) -> None:
            if threading.current_thread().name == name:
                self._measure(handle, original)
            else:
                original(handle)

        setattr(asyncio.Handle, "_run", run)  # noqa: B010 (mypy refuses to assign to a method)
        gc.callbacks.append(self._on_gc)
        self._sampler = threading.Thread(target=self._sample, name="loopwatch-sampler", daemon=True)
        self._sampler.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        setattr(asyncio.Handle, "_run", self._original)  # noqa: B010
        gc.callbacks.remove(self._on_gc)
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join()
        for fd in self._schedstat_fds:
            os.close(fd)
        LoopWatch._active = None

    def _measure(self, handle: asyncio.Handle, original: Run) -> None:
        ident = threading.get_ident()
        schedstat = self._schedstat()
        gc_own, gc_all = self._gc_by_thread.get(ident, 0.0), self._gc_total
        delay = _run_delay(schedstat)
        cpu, wall = time.thread_time(), time.perf_counter()
        running = _Running(handle, self._label, wall, _sleeps())
        self._running[ident] = running
        try:
            original(handle)
        finally:
            wall = time.perf_counter() - wall
            cpu = time.thread_time() - cpu
            del self._running[ident]
            # The run delay is read again only for a callback that was off its core for a while.
            delay = _run_delay(schedstat) - delay if wall - cpu > OFF_CORE else 0.0
            gc_own = self._gc_by_thread.get(ident, 0.0) - gc_own
            gc_others = self._gc_total - gc_all - gc_own
            self._settle(running, cpu - gc_own, wall - cpu - delay - gc_others, wall)

    def _settle(self, running: _Running, cpu: float, blocked: float, wall: float) -> None:
        sleeps = _sleeps() - running.sleeps
        with self._lock:
            self.callbacks += 1
            most_cpu = self.most_cpu is None or cpu > self.most_cpu.cpu
            most_blocked = self.most_blocked is None or blocked > self.most_blocked.blocked
            slow = cpu > self.cpu_limit or blocked > self.blocked_limit
            if not (most_cpu or most_blocked or slow):
                return
            seen = SlowCallback(
                _describe(running.handle), running.label, cpu, blocked, wall, sleeps, _lines(running)
            )
            if most_cpu:
                self.most_cpu = seen
            if most_blocked:
                self.most_blocked = seen
            if slow:
                self.slow.append(seen)

    def _schedstat(self) -> int | None:
        """This thread's /proc schedstat file, opened once (None where there is none)."""
        try:
            fd: int | None = self._local.schedstat
        except AttributeError:
            try:
                fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
                self._schedstat_fds.append(fd)
            except OSError:
                fd = None
            self._local.schedstat = fd
        return fd

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        # A collection holds the GIL: no other thread runs Python code meanwhile.
        ident = threading.get_ident()
        if phase == "start":
            self._gc_started[ident] = time.perf_counter()
            return
        started = self._gc_started.pop(ident, None)
        if started is not None:
            spent = time.perf_counter() - started
            self._gc_total += spent
            self._gc_by_thread[ident] = self._gc_by_thread.get(ident, 0.0) + spent

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            now = time.perf_counter()
            long_ones = [
                (i, r) for i, r in list(self._running.items()) if now - r.started > self._sample_after
            ]
            if not long_ones:
                continue
            frames = sys._current_frames()
            for ident, running in long_ones:
                frame = frames.get(ident)
                if frame is not None and self._running.get(ident) is running:
                    running.samples[_busy_line(frame)] += 1


def _sleeps() -> int:
    return resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw


def _run_delay(schedstat: int | None) -> float:
    """Seconds this thread has spent runnable but waiting for a core (Linux schedstat's second field)."""
    if schedstat is None:
        return 0.0
    try:
        return int(os.pread(schedstat, 128, 0).split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _short(path: str) -> str:
    """A path under the repository relative to it; any other (stdlib, site-packages) by its last parts."""
    resolved = Path(path)
    if resolved.is_relative_to(REPO) and ".venv" not in resolved.parts:
        return str(resolved.relative_to(REPO))
    return "/".join(resolved.parts[-2:])


def _ours(frame: FrameType) -> bool:
    path = Path(frame.f_code.co_filename)
    return path.is_relative_to(REPO) and ".venv" not in path.parts and path != Path(__file__)


def _proxy_code(frame: FrameType) -> bool:
    return Path(frame.f_code.co_filename).is_relative_to(REPO / "proxy")


def _where(frame: FrameType) -> str:
    return f"{_short(frame.f_code.co_filename)}:{frame.f_lineno} in {frame.f_code.co_name}"


def _innermost(frame: FrameType | None, which: Callable[[FrameType], bool]) -> FrameType | None:
    while frame is not None and not which(frame):
        frame = frame.f_back
    return frame


def _busy_line(frame: FrameType) -> str:
    """The innermost line of this repository on the stack; then the innermost line of any code, if that is
    elsewhere, and the proxy's line that led there, if that is another."""
    ours = _innermost(frame, _ours)
    if ours is None:
        return _where(frame)
    line = _where(ours)
    if ours is not frame:
        line += f" (in {_where(frame)})"
    caller = _innermost(ours, _proxy_code)
    if caller is not None and caller is not ours:
        line += f", from {_where(caller)}"
    return line


def _lines(running: _Running) -> tuple[str, ...]:
    if running.samples:
        return tuple(f"{line} ({n} samples)" for line, n in running.samples.most_common(SHOWN_LINES))
    callback = getattr(running.handle, "_callback", None)
    task = getattr(callback, "__self__", None)
    if not isinstance(task, asyncio.Task):
        return ()
    # Not sampled (too short, or the sampler got no core): where the task's coroutines wait now.
    waits: list[str] = []
    awaitable: Any = task.get_coro()
    while awaitable is not None:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is not None and _ours(frame):
            waits.append(_where(frame))
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
    return tuple(f"then awaited at {line}" for line in waits[-SHOWN_LINES:])


def _describe(handle: asyncio.Handle) -> str:
    """What the loop called: a task's step (named by its coroutine), or a function."""
    callback = getattr(handle, "_callback", None)
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro: Any = owner.get_coro()
        code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
        if code is None:
            return f"a step of task {owner.get_name()}"
        return (
            f"a step of task {owner.get_name()} ({code.co_qualname}, "
            f"{_short(code.co_filename)}:{code.co_firstlineno})"
        )
    function = getattr(callback, "__func__", callback)
    code = getattr(function, "__code__", None)
    name = getattr(callback, "__qualname__", None) or repr(callback)
    if code is None:
        return str(name)
    return f"{name} ({_short(code.co_filename)}:{code.co_firstlineno})"
