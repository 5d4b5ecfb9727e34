"""Serving processes on one host: warm pages and cached files with 1, 2 and 4 processes, and a cold file
asked for by 50 clients at once spread over the processes.

    .venv/bin/python bench/processes.py [--seconds 4]

Starts the fake upstream's 600-file project and `wheelfarm serve --processes N` (builds off, one cache
folder), warms the page, then drives it with wrk at 128 connections (pip's JSON, and a cached 64 KiB file).
Each row also gives the per-process efficiency: requests/s divided by N times the one-process figure. For
the cold file it counts upstream downloads (the fake upstream's own count): one is the goal.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fake_upstream import FakeFile, FakeUpstreamServer  # noqa: E402
from launch import free_port  # noqa: E402
from measure import PIP_ACCEPT, run_wrk  # noqa: E402
from warm_pages import big_project_index  # noqa: E402


def start(upstream: str, cache: Path, processes: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [
            str(ROOT / ".venv/bin/wheelfarm"), "serve", "--port", str(port), "--cache-dir", str(cache),
            "--upstream", upstream, "--logging-level", "warning", "--builder-enabled", "no",
            "--processes", str(processes),
        ],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                time.sleep(0.5 * processes)  # every process listening, not just the first
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("wheelfarm did not start")


def _body(url: str) -> bytes:
    return httpx.get(url, timeout=120).content


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=4)
    args = parser.parse_args()
    index = big_project_index()
    small = FakeFile("smallfile-1.0.tar.gz", os.urandom(64 * 1024))
    index.add_file("smallfile", small)
    rows = []
    base: dict[str, float] = {}
    with FakeUpstreamServer(index) as upstream:
        for processes in (1, 2, 4):
            with tempfile.TemporaryDirectory() as cache:
                process, url = start(upstream.simple_url, Path(cache), processes)
                try:
                    page = url + "/simple/bigproject/"
                    files = httpx.get(url + "/simple/smallfile/?format=json").json()["files"]
                    file_url = str(httpx.URL(url + "/simple/smallfile/").join(files[0]["url"]))
                    headers = {"Accept": PIP_ACCEPT}
                    for target in (page, file_url):
                        for _ in range(processes * 4):  # warm every process's memory caches
                            httpx.get(target, headers=headers).raise_for_status()
                        run_wrk(target, 128, 1, headers)
                    for kind, target in (("page", page), ("file", file_url)):
                        result = run_wrk(target, 128, args.seconds, headers)
                        base.setdefault(kind, result["rps"])
                        rows.append(
                            (
                                kind,
                                processes,
                                result["rps"],
                                result["p99_ms"],
                                result["rps"] / (processes * base[kind]),
                            )
                        )
                    # Cold: a new file, 50 clients at once.
                    cold = FakeFile(f"cold{processes}-1.0.tar.gz", os.urandom(1 << 20))
                    index.add_file(f"cold{processes}", cold)
                    index.slow_files[cold.filename] = 0.02
                    entry = httpx.get(f"{url}/simple/cold{processes}/?format=json").json()["files"][0]
                    cold_url = str(httpx.URL(f"{url}/simple/cold{processes}/").join(entry["url"]))
                    with ThreadPoolExecutor(50) as pool:
                        bodies = list(pool.map(_body, [cold_url] * 50))
                    right = sum(body == cold.content for body in bodies)
                    rows.append(
                        (
                            "cold file, 50 clients",
                            processes,
                            float(index.file_requests[cold.filename]),
                            float(right),
                            0.0,
                        )
                    )
                finally:
                    process.terminate()
                    process.wait()
    print(f"processes on one port, {os.cpu_count()} cores, wrk 128 connections, {args.seconds} s")
    print("| request | processes | req/s | p99 ms | per-process efficiency |")
    print("|---|---:|---:|---:|---:|")
    for kind, processes, rps, p99, efficiency in rows:
        if kind.startswith("cold"):
            print(f"| {kind} | {processes} | upstream downloads: {rps:.0f} | right bodies: {p99:.0f}/50 | |")
        else:
            print(f"| {kind} | {processes} | {rps:,.0f} | {p99:.1f} | {efficiency:.0%} |")


if __name__ == "__main__":
    main()
