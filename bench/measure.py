"""The measurements: wrk for pages, curl for files (warm and cold), real pip and uv for installs.

Every function measures one thing against one server and returns plain data (dicts of numbers), which
run.py stores in results.json and report.py turns into tables and charts.
"""

from __future__ import annotations

import math
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import coldclients
import httpx
from launch import MAIN_BIN, ROOT, ProcessTree, Server, cpu_seconds

sys.path.insert(0, str(ROOT / "tests"))
from clientenv import Client, clean_env, install_command, make_venv, venv_python

JSON_V1: Final = "application/vnd.pypi.simple.v1+json"
PIP_ACCEPT: Final = f"{JSON_V1}, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
FORMATS: Final = {"JSON": PIP_ACCEPT, "HTML": "text/html"}
# The page requests measured: pip's Accept, a browser-style HTML Accept, and pip's Accept with the
# Accept-Encoding pip and uv really send (their HTTP stacks ask for gzip on every request).
PAGE_REQUESTS: Final = {fmt: {"Accept": accept} for fmt, accept in FORMATS.items()} | {
    "JSON gzip": {"Accept": PIP_ACCEPT, "Accept-Encoding": "gzip"}
}
UNITS: Final = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def pip_user_agent() -> str:
    """The User-Agent the project's pip sends (wheelfarm derives the client's target from it)."""
    code = "from pip._internal.network.session import user_agent; print(user_agent())"
    return subprocess.run(
        [str(MAIN_BIN / "python"), "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


# Pages.


def wrk(url: str, connections: int, seconds: float, headers: dict[str, str], pid: int) -> dict[str, Any]:
    """One wrk run; with the CPU the server (process `pid` and its children) used, in % of one core."""
    cpu, started = cpu_seconds(pid), time.monotonic()
    result = run_wrk(url, connections, seconds, headers)
    result["server_cpu_pct"] = 100 * (cpu_seconds(pid) - cpu) / (time.monotonic() - started)
    return result


def run_wrk(url: str, connections: int, seconds: float, headers: dict[str, str]) -> dict[str, Any]:
    command = [
        "wrk",
        "-t",
        str(min(connections, 2)),
        "-c",
        str(connections),
        "-d",
        f"{seconds:g}s",
        "--timeout",
        "30s",
        "--latency",
    ]
    for key, value in headers.items():
        command += ["-H", f"{key}: {value}"]
    output = subprocess.run(
        [*command, url], capture_output=True, text=True, check=True, timeout=seconds + 60
    ).stdout
    result: dict[str, Any] = {"connections": connections, "seconds": seconds}
    result["rps"] = float(_find(r"Requests/sec:\s+([\d.]+)", output))
    result["requests"] = int(_find(r"(\d+) requests in", output))
    for percentile in ("50", "75", "90", "99"):
        value, unit = re.search(rf"\s{percentile}%\s+([\d.]+)(us|ms|s|m)\b", output).groups()  # type: ignore[union-attr]
        result[f"p{percentile}_ms"] = float(value) * UNITS[unit]
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    result["non_2xx"] = int(non_2xx.group(1)) if non_2xx else 0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    result["socket_errors"] = sum(int(g) for g in errors.groups()) if errors else 0
    return result


def _find(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise ValueError(f"wrk output has no {pattern!r}:\n{text}")
    return match.group(1)


# Files.


@dataclass(frozen=True)
class Transfer:
    status: int
    size: int
    started: float  # monotonic, just before curl was started
    first_byte: float  # seconds after `started`
    total: float


def curl(url: str, timeout: float = 600.0) -> Transfer:
    started = time.monotonic()
    done = subprocess.run(
        [
            "curl",
            "-s",
            "-L",
            "-o",
            "/dev/null",
            "--max-time",
            str(timeout),
            "-w",
            "%{http_code} %{size_download} %{time_starttransfer} %{time_total}",
            url,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout + 30,
    )
    fields = done.stdout.split()
    if len(fields) != 4:
        return Transfer(0, 0, started, float("nan"), time.monotonic() - started)
    code, size, first, total = fields
    return Transfer(int(code), int(size), started, float(first), float(total))


def warm_downloads(server: Server, url: str, size: int, clients: int, seconds: float) -> dict[str, Any]:
    """`clients` curl loops fetching `url` until `seconds` have passed (each at least once)."""
    transfers: list[Transfer] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def loop() -> None:
        while True:
            transfer = curl(url)
            with lock:
                transfers.append(transfer)
            if time.monotonic() >= deadline or transfer.status != 200:
                return

    memory = ProcessTree(server.pid)
    cpu = cpu_seconds(server.pid)
    with memory.sampling():
        started = time.monotonic()
        threads = [threading.Thread(target=loop) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.monotonic() - started
    good = [t for t in transfers if t.status == 200 and t.size == size]
    return {
        "clients": clients,
        "downloads": len(transfers),
        "failed": len(transfers) - len(good),
        "wall_s": wall,
        "aggregate_MBps": sum(t.size for t in good) / wall / 1e6,
        "server_cpu_pct": 100 * (cpu_seconds(server.pid) - cpu) / wall,
        "per_client_MBps": statistics.median(t.size / t.total / 1e6 for t in good) if good else 0.0,
        "rss_start_mb": memory.start_main,
        "rss_peak_mb": memory.peak_main,
        "rss_tree_peak_mb": memory.peak_tree,
    }


@dataclass(frozen=True)
class TimedGet:
    """One GET with absolute times (time.monotonic, the same clock as the fake upstream's)."""

    status: int
    size: int
    requested: float
    first_byte: float  # the first byte of the body
    last_byte: float
    redirects: int
    error: str = ""


def cold_download(
    server: Server, url: str, size: int, clients: int, upstream: str, filename: str
) -> dict[str, Any]:
    """`clients` GETs started at once (one asyncio process, bench/coldclients.py) for one file the proxy
    has never fetched."""
    httpx.post(f"{upstream}/_bench/reset").raise_for_status()
    memory = ProcessTree(server.pid)
    with memory.sampling():
        answers = coldclients.many(url, clients)
    transfers = [
        TimedGet(a.status, a.size, requested, a.first_byte, a.last_byte, redirects, a.error)
        for a, requested, redirects in answers
    ]
    stats = httpx.get(f"{upstream}/_bench/stats").json()
    downloads = stats["downloads"].get(filename, [])
    first_request = min(t.requested for t in transfers)
    upstream_first = min(start for start, _ in downloads) if downloads else float("nan")
    upstream_last = max(end for _, end in downloads) if downloads else float("nan")
    clients_data: list[dict[str, Any]] = [
        {
            "status": t.status,
            "ok": t.status == 200 and t.size == size,
            "redirects": t.redirects,
            "error": t.error,
            "first_byte_s": t.first_byte - first_request,
            "last_byte_s": t.last_byte - first_request,
            "after_upstream_first_byte_ms": (t.first_byte - upstream_first) * 1000,
        }
        for t in transfers
    ]
    return {
        "clients": clients,
        "upstream_downloads": len(downloads),
        "upstream_first_byte_s": upstream_first - first_request,
        "upstream_last_byte_s": upstream_last - first_request,
        "requests_spread_ms": (max(t.requested for t in transfers) - first_request) * 1000,
        "ok": sum(c["ok"] for c in clients_data),
        "per_client": clients_data,
        "first_byte_s": _spread([c["first_byte_s"] for c in clients_data]),
        "last_byte_s": _spread([c["last_byte_s"] for c in clients_data]),
        "max_after_upstream_ms": max(c["after_upstream_first_byte_ms"] for c in clients_data),
        "rss_peak_mb": memory.peak_main,
        "rss_tree_peak_mb": memory.peak_tree,
    }


def _spread(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(v for v in values if not math.isnan(v)) or [float("nan")]
    return {"min": ordered[0], "p50": statistics.median(ordered), "max": ordered[-1]}


# Installs.


def install(
    client: str, source: list[str], requirements: Sequence[str], work: Path, extra: Sequence[str] = ()
) -> dict[str, Any]:
    """One timed install into a fresh venv; `source` is ["--index-url", URL] or ["--no-index", ...]."""
    if work.exists():
        shutil.rmtree(work)
    # As in the tests (tests/clientenv.py), with the project's own pip and uv, and their timeouts raised.
    env = clean_env(work / "home", {"PIP_TIMEOUT": "120", "UV_HTTP_TIMEOUT": "120"})
    venv = make_venv(work / "venv", env, interpreter=MAIN_BIN / "python")
    python = venv_python(venv)
    command = install_command(Client(client), python, [*source, *extra], requirements, tools=MAIN_BIN)
    started = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=900)
    seconds = time.monotonic() - started
    installed = len(list((venv / "lib").glob("python3*/site-packages/*.dist-info")))
    output = done.stdout + done.stderr
    shutil.rmtree(work, ignore_errors=True)
    return {
        "ok": done.returncode == 0,
        "seconds": seconds,
        "installed": installed,
        "built_on_client": "Building wheel" in output or "Built " in output,
        "output": output[-3000:] if done.returncode else "",
    }
