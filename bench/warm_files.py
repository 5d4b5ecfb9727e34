"""Warm-file latency and throughput of wheelfarm, and the cost of the first hit after a restart.

    .venv/bin/python bench/warm_files.py [--source DIR] [--duration 8] [--connections 1,16]

Starts a fake upstream (tests/fake_upstream.py) with a 20 KiB and a 1 MiB wheel, starts `python -m proxy
serve` in front of it (the code under DIR when given: compare two versions with the same client), fetches
each file once, then asks for them over and over from an asyncio client (aiohttp, keep-alive) for
``--duration`` seconds per connection count, and prints requests a second and the median and 99th
percentile latency. Then it restarts the proxy on the same cache and times the first and second hit of a
64 MiB file: the first is rehashed before it is served (unless the scrub got there first: pass
``--restart-args "--cache-scrub-mb-per-minute 0"`` to see the first hit's own cost).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fake_upstream import FakeFile, FakeIndex, FakeUpstreamServer  # noqa: E402
from launch import free_port  # noqa: E402

FILES = {
    "small": FakeFile("smallpkg-1.0-py3-none-any.whl", os.urandom(20 * 1024)),
    "1mib": FakeFile("midpkg-1.0-py3-none-any.whl", os.urandom(1 << 20)),
    "64mib": FakeFile("hugepkg-1.0-py3-none-any.whl", os.urandom(64 << 20)),
}


def start_proxy(
    source: Path | None, upstream: str, cache: Path, extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(source)} if source else dict(os.environ)
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--port", str(port), "--cache-dir", str(cache),
         "--upstream", upstream, "--logging-level", "warning", "--builder-enabled", "false", *extra],
        env=env, stderr=subprocess.DEVNULL, cwd=source or ROOT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError("proxy did not start")


def file_url(proxy: str, project: str, filename: str) -> str:
    listed = httpx.get(f"{proxy}/simple/{project}/?format=json", timeout=60).json()["files"]
    (entry,) = [f for f in listed if f["filename"] == filename]
    return str(httpx.URL(f"{proxy}/simple/{project}/").join(entry["url"]))


async def drive(url: str, connections: int, duration: float) -> tuple[float, float, float]:
    """(requests a second, median ms, p99 ms) of GETs of ``url`` by ``connections`` keep-alive clients."""
    latencies: list[float] = []
    deadline = time.perf_counter() + duration

    async def client(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            async with session.get(url) as response:
                await response.read()
                assert response.status == 200
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        began = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(connections)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return len(latencies) / elapsed, statistics.median(latencies) * 1000, p99 * 1000


def timed_get(url: str) -> float:
    started = time.perf_counter()
    response = httpx.get(url, timeout=120)
    assert response.status_code == 200
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--source", type=Path, help="a tree holding the proxy/ and builder/ to measure")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--connections", default="1,16")
    parser.add_argument(
        "--restart-args", default="", help="flags of the restarted proxy ('--cache-scrub-mb-per-minute 0')"
    )
    args = parser.parse_args()
    index = FakeIndex()
    for dist in FILES.values():
        index.add_file(dist.filename.split("-")[0], dist)
    with FakeUpstreamServer(index) as upstream, tempfile.TemporaryDirectory() as scratch:
        cache = Path(scratch) / "cache"
        process, proxy = start_proxy(args.source, upstream.simple_url, cache)
        try:
            urls = {name: file_url(proxy, d.filename.split("-")[0], d.filename) for name, d in FILES.items()}
            for url in urls.values():
                timed_get(url)
            for name in ("small", "1mib"):
                for connections in (int(c) for c in args.connections.split(",")):
                    rps, median, p99 = asyncio.run(drive(urls[name], connections, args.duration))
                    line = f"warm {name:5} c={connections:<3} {rps:8.0f} req/s"
                    print(f"{line}  p50 {median:6.2f} ms  p99 {p99:6.2f} ms", flush=True)
        finally:
            process.terminate()
            process.wait(30)
        extra = tuple(args.restart_args.split())
        process, proxy = start_proxy(args.source, upstream.simple_url, cache, extra)
        try:
            url = file_url(proxy, "hugepkg", FILES["64mib"].filename)
            first, second = timed_get(url), timed_get(url)
            print(f"restarted, 64 MiB file: first hit {first * 1000:.0f} ms, second {second * 1000:.0f} ms")
        finally:
            process.terminate()
            process.wait(30)


if __name__ == "__main__":
    main()
