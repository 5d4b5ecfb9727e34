"""Wall time of one farm build of each test project, from the first request to its build-pending link
until the wheel arrives: the cost of the sandbox and the build pipeline as a client sees it.

    .venv/bin/python bench/build_times.py [--repeat 5] [--projects tinypure tinynative]

Every run starts a fresh proxy with an empty cache in front of a fake upstream that serves the sdist and
the build backends (tests/.wheelhouse); only the build is timed. It uses nothing but the test harness's
public pieces, so the same script measures an older checkout (run it from that checkout's folder).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]
os.environ["PYTHONPATH"] = str(ROOT)  # worker processes of an older checkout import its code too

import httpx  # noqa: E402
from dists import PROJECTS_DIR, build_sdist, wheel_metadata  # noqa: E402
from fake_upstream import FakeFile, FakeIndex, FakeUpstreamServer  # noqa: E402
from fakes import FakeClock, ProxyServer, proxy_settings  # noqa: E402

WHEELHOUSE = ROOT / "tests" / ".wheelhouse"
TARGET = "cp311-manylinux_2_36_x86_64"


def one_build(upstream: FakeUpstreamServer, cache: Path, project: str) -> float:
    settings = proxy_settings(
        cache, upstream.simple_url, upstream_read_timeout=30.0, builder_timeout=300.0, builder_enabled=True
    )
    with ProxyServer(settings, FakeClock()) as proxy:
        wait_ready(proxy)
        scope = f"{proxy.url}/t/{TARGET}/simple/{project}/"
        entries = httpx.get(scope + "?format=json", timeout=30).json()["files"]
        pending = [e for e in entries if e.get("_wheelfarm", {}).get("pending")]
        assert len(pending) == 1, f"{project}: no build-pending link in {entries}"
        url = str(httpx.URL(scope).join(pending[0]["url"]))
        started = time.monotonic()
        while True:
            response = httpx.get(url, timeout=600)
            if response.status_code != 503:
                break
        seconds = time.monotonic() - started
        assert response.status_code == 200, f"{project}: {response.status_code} {response.text[:500]}"
        return seconds


def wait_ready(proxy: ProxyServer) -> None:
    """Newer proxies check their sandbox at start and report it in /healthz; older ones are ready at once."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        health = httpx.get(f"{proxy.url}/healthz", timeout=10).json()
        if health.get("builder", {}).get("state", "ready") != "checking":
            return
        time.sleep(0.05)
    raise TimeoutError("the builder's self-check did not finish")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--projects", nargs="+", default=["tinypure", "tinynative"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        index = FakeIndex()
        for wheel in sorted(WHEELHOUSE.glob("*.whl")):
            index.add_file(
                wheel.name.split("-")[0], FakeFile.from_path(wheel, metadata=wheel_metadata(wheel))
            )
        for project in args.projects:
            index.add_file(project, FakeFile.from_path(build_sdist(PROJECTS_DIR / project, "9.0", scratch)))
        with FakeUpstreamServer(index) as upstream:
            for project in args.projects:
                times = [
                    one_build(upstream, scratch / f"cache-{project}-{n}", project) for n in range(args.repeat)
                ]
                print(
                    f"{project}: median {statistics.median(times):.2f} s, "
                    f"min {min(times):.2f} s, max {max(times):.2f} s over {len(times)} builds"
                )


if __name__ == "__main__":
    main()
