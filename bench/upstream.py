"""The fake upstream index of the benchmark, in its own process: tests/fake_upstream.py over bench data.

    .venv/bin/python bench/upstream.py MANIFEST PORT_FILE

Loads every file the manifest lists into a `FakeIndex`, serves it on 127.0.0.1 (a free port, written to
PORT_FILE) until SIGTERM, and adds three routes for the harness:

- ``GET /_bench/stats``: page and file request counters, and per file the monotonic times (CLOCK_MONOTONIC,
  comparable across processes) at which each download started sending and finished;
- ``POST /_bench/reset``: zero the counters and times;
- ``POST /_bench/throttle?mbps=N``: pace file downloads to about N MB/s each (0: as fast as possible).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataset import Manifest
from fake_upstream import FakeFile, FakeIndex, make_app
from servers import ServerThread

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PACE_CHUNK = 256 * 1024


def load_index(manifest: Manifest) -> FakeIndex:
    index = FakeIndex()
    for entry in manifest.files:
        metadata = Path(entry.metadata).read_bytes() if entry.metadata else None
        file = FakeFile(
            entry.filename,
            Path(entry.path).read_bytes(),
            metadata=metadata,
            requires_python=entry.requires_python,
            yanked=entry.yanked,
        )
        index.add_file(entry.project, file)
    return index


class Stats:
    """Download times per file: [start, end] monotonic seconds of every GET of /files/<name> (not HEAD)."""

    def __init__(self) -> None:
        self.downloads: dict[str, list[list[float]]] = defaultdict(list)

    def middleware(self) -> Middleware:
        @web.middleware
        async def timing(request: web.Request, handler: Handler) -> web.StreamResponse:
            if (
                request.method != "GET"
                or not request.path.startswith("/files/")
                or request.path.endswith(".metadata")
            ):
                return await handler(request)
            times = [time.monotonic(), float("nan")]
            self.downloads[request.match_info.get("filename", request.path)].append(times)
            try:
                return await handler(request)
            finally:
                times[1] = time.monotonic()

        return timing


def build_app(index: FakeIndex, stats: Stats) -> web.Application:
    app: web.Application = make_app(index)
    app.middlewares.append(stats.middleware())

    async def get_stats(request: web.Request) -> web.Response:
        with index.lock:
            return web.json_response(
                {
                    "pages": dict(index.page_requests),
                    "files": dict(index.file_requests),
                    "metadata": dict(index.metadata_requests),
                    "downloads": dict(stats.downloads),
                }
            )

    async def reset(request: web.Request) -> web.Response:
        with index.lock:
            index.page_requests.clear()
            index.file_requests.clear()
            index.metadata_requests.clear()
            stats.downloads.clear()
        return web.json_response({"reset": True})

    async def throttle(request: web.Request) -> web.Response:
        mbps = float(request.query.get("mbps", "0"))
        # fake_upstream sleeps file_delay before each chunk of file_chunk bytes.
        index.file_chunk = PACE_CHUNK if mbps else 64 * 1024
        index.file_delay = PACE_CHUNK / (mbps * 1e6) if mbps else 0.0
        return web.json_response({"file_chunk": index.file_chunk, "file_delay": index.file_delay})

    app.router.add_get("/_bench/stats", get_stats)
    app.router.add_post("/_bench/reset", reset)
    app.router.add_post("/_bench/throttle", throttle)
    return app


def main() -> None:
    manifest_path, port_file = Path(sys.argv[1]), Path(sys.argv[2])
    index = load_index(Manifest.load(manifest_path))
    stats = Stats()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    async def factory() -> web.Application:
        return build_app(index, stats)

    with ServerThread(factory, name="bench-upstream") as server:
        port_file.write_text(str(server.port))
        while not stop.wait(0.5):
            pass


if __name__ == "__main__":
    main()
