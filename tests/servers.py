"""Run an aiohttp application on 127.0.0.1 in a background thread with its own event loop.

Synchronous tests, httpx clients and pip subprocesses can then talk to it over real HTTP, while the
test thread keeps a handle on the server's loop through `ServerThread.run`. Used for the fake
upstream index and for the proxy itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from aiohttp import web

T = TypeVar("T")

# Applications that open client sessions must be created inside the loop that runs them,
# so a zero-argument coroutine function that builds the app is accepted as well as an app.
AppFactory = Callable[[], Awaitable[web.Application]]


class ServerThread:
    """An aiohttp server on a free port of 127.0.0.1, served by a daemon thread.

    Use it as a context manager (`with ServerThread(app) as server: httpx.get(server.url)`) or call
    `start()` and `stop()`. Startup errors (a failing on_startup hook, say) are raised by `start()`.
    """

    def __init__(
        self,
        app: web.Application | AppFactory,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        shutdown_timeout: float = 1.0,
        startup_timeout: float = 30.0,
        name: str = "test-server",
        runner_options: dict[str, Any] | None = None,
    ) -> None:
        self.host = host
        self._app = app
        self._requested_port = port
        # On stop, aiohttp waits this long for handlers still running (a slow download, say), then
        # as long again after cancelling them.
        self._shutdown_timeout = shutdown_timeout
        self._startup_timeout = startup_timeout
        self._name = name
        self._runner_options = runner_options or {}
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._port: int | None = None
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{self._name} is not running")
        return self._port

    @property
    def url(self) -> str:
        """The server's origin without a trailing slash, e.g. `http://127.0.0.1:41234`."""
        return f"http://{self.host}:{self.port}"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._loop.is_closed():
            raise RuntimeError(f"{self._name} is not running")
        return self._loop

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError(f"{self._name} was already started")
        self._thread = threading.Thread(target=self._thread_main, name=self._name, daemon=True)
        self._thread.start()
        if not self._ready.wait(self._startup_timeout):
            raise TimeoutError(f"{self._name} did not start within {self._startup_timeout} s")
        if self._error is not None:
            self._thread.join()
            raise RuntimeError(f"{self._name} failed to start") from self._error
        return self

    def run(self, coro: Coroutine[Any, Any, T], *, timeout: float | None = 60.0) -> T:
        """Run `coro` in the server's event loop and return its result (or raise its exception)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def stop(self) -> None:
        """Stop serving, run the app's cleanup hooks and join the thread. Safe to call twice."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed between the check and the call
                loop.call_soon_threadsafe(stopping.set)
        thread.join(self._shutdown_timeout + 30.0)
        if thread.is_alive():
            raise RuntimeError(f"{self._name} did not stop")
        self._port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:  # reported to start(); after startup, re-raised in the thread
            if self._ready.is_set():
                raise
            self._error = error
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        app = self._app if isinstance(self._app, web.Application) else await self._app()
        runner = web.AppRunner(app, shutdown_timeout=self._shutdown_timeout, **self._runner_options)
        await runner.setup()  # runs on_startup and the cleanup_ctx generators up to their yield
        try:
            site = web.TCPSite(runner, self.host, self._requested_port)
            await site.start()
            self._port = int(runner.addresses[0][1])
            self._ready.set()
            await self._stopping.wait()
        finally:
            await runner.cleanup()
