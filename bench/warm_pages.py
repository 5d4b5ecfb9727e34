"""Warm-cache page latency and throughput of wheelfarm, and its memory while serving the root list.

    .venv/bin/python bench/warm_pages.py [--duration 10] [--live-root]

Starts a fake upstream (tests/fake_upstream.py) with a 600-file project, starts `wheelfarm serve` in front
of it, warms the page, then drives it with wrk (Debian package `wrk`) at 1, 16 and 128 connections for JSON
and HTML. With --live-root it also fetches the real upstream's root project list through a second proxy
and reports that proxy's peak RSS (VmHWM) while it downloads, converts and serves the list.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fake_upstream import FakeFile, FakeIndex, FakeUpstreamServer  # noqa: E402
from launch import free_port  # noqa: E402
from measure import JSON_V1, PIP_ACCEPT, run_wrk  # noqa: E402


def start_proxy(upstream: str, cache_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [
            str(ROOT / ".venv/bin/wheelfarm"),
            "serve",
            "--port",
            str(port),
            "--cache-dir",
            str(cache_dir),
            "--upstream",
            upstream,
            "--logging-level",
            "warning",
            "--upstream-read-timeout",
            "120",
        ],
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("proxy did not start")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def big_project_index() -> FakeIndex:
    """A fake index with one project of 300 releases, an sdist and a wheel each (600 files)."""
    index = FakeIndex()
    for i in range(300):
        version = f"1.{i}"
        index.add_file(
            "bigproject", FakeFile(f"bigproject-{version}.tar.gz", os.urandom(64), requires_python=">=3.8")
        )
        index.add_file(
            "bigproject",
            FakeFile(
                f"bigproject-{version}-py3-none-any.whl", os.urandom(64), metadata=b"Metadata-Version: 2.1\n"
            ),
        )
    return index


def warm_pages(seconds: int) -> None:
    with FakeUpstreamServer(big_project_index()) as upstream, tempfile.TemporaryDirectory() as cache:
        process, url = start_proxy(upstream.simple_url, Path(cache))
        try:
            page = url + "/simple/bigproject/"
            for accept in (PIP_ACCEPT, "text/html"):
                httpx.get(page, headers={"Accept": accept}).raise_for_status()
            print(f"warm project page, 600 files, {seconds} s per cell (wrk, 2 threads)")
            print("| format | connections | requests/s | p50 ms | p99 ms |")
            print("|---|---:|---:|---:|---:|")
            for name, accept in (("JSON", PIP_ACCEPT), ("HTML", "text/html")):
                for connections in (1, 16, 128):
                    result = run_wrk(page, connections, seconds, {"Accept": accept})
                    print(
                        f"| {name} | {connections} | {result['rps']:.0f} | {result['p50_ms']:.2f} "
                        f"| {result['p99_ms']:.2f} |"
                    )
            print(f"proxy peak RSS: {peak_rss_mb(process.pid):.0f} MB")
        finally:
            process.terminate()
            process.wait()


def live_root() -> None:
    with tempfile.TemporaryDirectory() as cache:
        process, url = start_proxy("https://pypi.org/simple/", Path(cache))
        try:
            for label, accept in (
                ("cold (download + convert)", JSON_V1),
                ("warm JSON", JSON_V1),
                ("warm HTML", "text/html"),
            ):
                started = time.monotonic()
                with httpx.stream(
                    "GET", url + "/simple/", headers={"Accept": accept}, timeout=600
                ) as response:
                    size = sum(len(chunk) for chunk in response.iter_raw())
                print(
                    f"root list {label}: {size / 1e6:.1f} MB in {time.monotonic() - started:.2f} s, "
                    f"proxy peak RSS so far {peak_rss_mb(process.pid):.0f} MB"
                )
        finally:
            process.terminate()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--live-root", action="store_true")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    warm_pages(args.duration)
    if args.live_root:
        live_root()


if __name__ == "__main__":
    main()
