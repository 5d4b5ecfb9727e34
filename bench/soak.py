"""Soak: 1,000 client connections for 60 s against `wheelfarm serve`, warm pages and files mixed, loopback
only. Reports errors, latency percentiles, and the proxy's RSS and open descriptors before, at peak and
after (a leak shows as "after" well above "before").

    .venv/bin/python bench/soak.py [--connections 1000] [--duration 60]

Starts a fake upstream (tests/fake_upstream.py) with one project of 40 releases (an sdist, a 64 KiB wheel
with PEP 658 metadata, and every fifth release a 1 MiB wheel), starts the proxy in front of it, fetches
every page and file once (so the soak measures the warm proxy), then drives it with wrk (Debian package
`wrk`, two threads) through bench/soak.lua: about 60% pages (pip's JSON with gzip, and HTML), 40% files
(metadata, 64 KiB and 1 MiB wheels), all on kept-alive connections.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fake_upstream import FakeFile, FakeIndex, FakeUpstreamServer  # noqa: E402
from launch import free_port, rss_mb  # noqa: E402
from measure import PIP_ACCEPT, UNITS  # noqa: E402

LUA = Path(__file__).with_name("soak.lua")
PROJECT = "soakproject"
RELEASES = 40


def soak_index() -> FakeIndex:
    index = FakeIndex()
    for i in range(RELEASES):
        version = f"1.{i}"
        index.add_file(PROJECT, FakeFile(f"{PROJECT}-{version}.tar.gz", os.urandom(4096)))
        wheel = FakeFile(
            f"{PROJECT}-{version}-py3-none-any.whl", os.urandom(64 << 10), metadata=b"Metadata-Version: 2.1\n"
        )
        index.add_file(PROJECT, wheel)
        if i % 5 == 0:
            big = f"{PROJECT}-{version}-cp311-cp311-manylinux_2_17_x86_64.whl"
            index.add_file(PROJECT, FakeFile(big, os.urandom(1 << 20)))
    return index


def start_proxy(upstream: str, cache: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [
        str(ROOT / ".venv/bin/wheelfarm"), "serve", "--port", str(port), "--cache-dir", str(cache),
        "--upstream", upstream, "--builder-enabled", "no", "--logging-level", "warning",
        "--logging-format", "json",
    ]  # fmt: skip
    with log.open("wb") as stderr:
        process = subprocess.Popen(command, stderr=stderr, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"proxy did not start: {log.read_text()}")


def warm(url: str) -> list[dict[str, str]]:
    """Fetch the page (both formats) and every file once; return the soak's request mix for soak.lua."""
    page = f"{url}/simple/{PROJECT}/"
    mix = [
        {"path": f"/simple/{PROJECT}/", "accept": PIP_ACCEPT, "gzip": "1", "weight": "4"},
        {"path": f"/simple/{PROJECT}/", "accept": "text/html", "gzip": "", "weight": "2"},
    ]
    httpx.get(page, headers={"Accept": "text/html"}).raise_for_status()
    listed = httpx.get(page, headers={"Accept": "application/vnd.pypi.simple.v1+json"}).json()["files"]
    for entry in listed:
        target = str(httpx.URL(page).join(entry["url"]))
        httpx.get(target, timeout=60).raise_for_status()
        path = httpx.URL(target).raw_path.decode()
        if entry["filename"].endswith(".whl"):
            weight = "1" if "manylinux" in entry["filename"] else "2"
            mix.append({"path": path, "accept": "*/*", "gzip": "", "weight": weight})
            if entry.get("core-metadata"):
                httpx.get(target + ".metadata").raise_for_status()
                mix.append({"path": path + ".metadata", "accept": "*/*", "gzip": "", "weight": "1"})
    return mix


def process_state(pid: int) -> dict[str, float]:
    return {"rss_mb": round(rss_mb(pid), 1), "open_fds": len(os.listdir(f"/proc/{pid}/fd"))}


class Peak:
    """The proxy's highest RSS and descriptor count, sampled every 0.2 s while the soak runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.values = {"rss_mb": 0.0, "open_fds": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for key, value in process_state(self.pid).items():
                self.values[key] = max(self.values[key], value)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def run_wrk(url: str, mix: list[dict[str, str]], connections: int, seconds: int) -> dict[str, Any]:
    env = {**os.environ, "SOAK_MIX": json.dumps(mix)}
    command = ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--timeout", "10s",
               "--latency", "-s", str(LUA), url]  # fmt: skip
    output = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=seconds + 120, env=env
    ).stdout
    result: dict[str, Any] = {"wrk": output}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("50%", "90%", "99%"):
            value = float(parts[1].rstrip("usmh"))
            unit = parts[1][len(parts[1].rstrip("usmh")) :]
            result[f"p{parts[0][:-1]}_ms"] = value * UNITS[unit]
        elif line.startswith("Requests/sec:"):
            result["rps"] = float(parts[1])
        elif "requests in" in line:
            result["requests"] = int(parts[0])
        elif line.strip().startswith("Socket errors:"):
            numbers = [int(p.rstrip(",")) for p in parts if p.rstrip(",").isdigit()]
            result["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), numbers, strict=True))
        elif line.strip().startswith("Non-2xx or 3xx responses:"):
            result["non_2xx"] = int(parts[-1])
    result.setdefault("non_2xx", 0)
    result.setdefault("socket_errors", {"connect": 0, "read": 0, "write": 0, "timeout": 0})
    return result


def soak(connections: int, seconds: int) -> dict[str, Any]:
    with FakeUpstreamServer(soak_index()) as upstream, tempfile.TemporaryDirectory() as work:
        log = Path(work) / "wheelfarm.log"
        process, url = start_proxy(upstream.simple_url, Path(work) / "cache", log)
        try:
            mix = warm(url)
            before = process_state(process.pid)
            with Peak(process.pid) as peak:
                result = run_wrk(url, mix, connections, seconds)
            time.sleep(1.0)  # wrk has closed its connections; let the proxy see them go
            after = process_state(process.pid)
            healthy = httpx.get(url + "/healthz", timeout=5).status_code == 200
        finally:
            process.terminate()
            process.wait(30)
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    problems = [line for line in lines if line.get("level") in ("warning", "error")]
    return {
        "connections": connections,
        "seconds": seconds,
        **{k: v for k, v in result.items() if k != "wrk"},
        "before": before,
        "peak": peak.values,
        "after": after,
        "healthy_after": healthy,
        "log_warnings_and_errors": len(problems),
        "first_problems": problems[:5],
        "wrk_output": result["wrk"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--duration", type=int, default=60, help="seconds of load (at most 600)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    report = soak(args.connections, min(args.duration, 600))
    print(report.pop("wrk_output"))
    print(json.dumps(report, indent=2))
    errors = sum(report["socket_errors"].values()) + report["non_2xx"]
    sys.exit(0 if errors == 0 and report["healthy_after"] else 1)


if __name__ == "__main__":
    main()
