"""Build throughput of a cluster with 1 and 2 remote builders.

    .venv/bin/python bench/cluster_builds.py [--builds 8]

Starts a PostgreSQL of its own (tests/pgserver.py), one `wheelfarm serve` with builds off in front of the
fake upstream, and N `wheelfarm builder run` (one build slot each, build uids of their own). It asks for the
build links of ``--builds`` sdist-only releases at once, like clients would (retrying on 503 as pip does),
and times until every wheel is served. Two kinds of release: their backend sleeps 2 s (what the farm and
the sandbox cost around a build that waits) or spins 2 s of CPU (what the cores allow).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from dists import in_tree_backend_sdist  # noqa: E402
from fake_upstream import FakeFile, FakeIndex, FakeUpstreamServer  # noqa: E402
from launch import free_port  # noqa: E402
from pgserver import PostgresServer  # noqa: E402

WHEELFARM = ROOT / ".venv/bin/wheelfarm"
TARGET = "cp311-manylinux_2_36_x86_64"
BODIES = {
    "sleep": "    import time\n    time.sleep(2)",
    "cpu": "    import time\n    end = time.process_time() + 2\n"
    "    while time.process_time() < end:\n        pass",
}


def fetch_built(url: str) -> float:
    """Follow a build link until the wheel comes (503 + Retry-After meanwhile); when it came."""
    while True:
        answer = httpx.get(url, timeout=300, follow_redirects=True)
        if answer.status_code == 200:
            return time.monotonic()
        if answer.status_code != 503:
            raise RuntimeError(f"{url}: {answer.status_code} {answer.text[:200]}")
        time.sleep(min(5.0, float(answer.headers.get("Retry-After", "1"))))


def run(kind: str, builders: int, count: int, work: Path) -> float:
    index = FakeIndex()
    for n in range(count):
        sdist = in_tree_backend_sdist(work / "sdists", f"{kind}{builders}job{n}", "1.0", BODIES[kind])
        index.add_file(f"{kind}{builders}job{n}", FakeFile.from_path(sdist))
    database = PostgresServer()
    database.init()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(work / "home"),
            "WHEELFARM_CLUSTER_DATABASE": database.url,
        }
        with FakeUpstreamServer(index) as upstream:
            port = free_port()
            farm = f"http://127.0.0.1:{port}"
            processes.append(
                subprocess.Popen(
                    [
                        str(WHEELFARM),
                        "serve",
                        "--port",
                        str(port),
                        "--cache-dir",
                        str(work / "farm"),
                        "--upstream",
                        upstream.simple_url,
                        "--builder-enabled",
                        "no",
                        "--logging-level",
                        "warning",
                        "--cluster-store",
                        str(work / "store"),
                    ],
                    env=env,
                    stderr=subprocess.DEVNULL,
                )
            )
            for n in range(builders):
                add = [str(WHEELFARM), "db", "add-token", f"bench-{n}"]
                token = subprocess.run(
                    add, env=env, capture_output=True, text=True, check=True
                ).stdout.strip()
                processes.append(
                    subprocess.Popen(
                        [
                            str(WHEELFARM),
                            "builder",
                            "run",
                            "--farm",
                            farm,
                            "--workers",
                            "1",
                            "--work-dir",
                            str(work / f"builder{n}"),
                            "--build-uid",
                            str(1_900_500_000 + n * 1000),
                        ],
                        env={**env, "WHEELFARM_BUILDER_TOKEN": token},
                        stderr=subprocess.DEVNULL,
                    )
                )
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(farm + "/healthz").json()["builder"]["state"] == "ready":
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("no builder became ready")
                time.sleep(0.2)
            links = []
            for n in range(count):
                page = httpx.get(f"{farm}/t/{TARGET}/simple/{kind}{builders}job{n}/?format=json").json()
                (pending,) = [f["url"] for f in page["files"] if f.get("_wheelfarm", {}).get("pending")]
                links.append(
                    str(httpx.URL(f"{farm}/t/{TARGET}/simple/{kind}{builders}job{n}/").join(pending))
                )
            started = time.monotonic()
            with ThreadPoolExecutor(count) as pool:
                finished = max(pool.map(fetch_built, links))
            return finished - started
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()
        database.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--builds", type=int, default=8)
    args = parser.parse_args()
    rows = []
    for kind in BODIES:
        for builders in (1, 2):
            with tempfile.TemporaryDirectory() as folder:
                seconds = run(kind, builders, args.builds, Path(folder))
            rows.append((kind, builders, seconds))
    print(f"{args.builds} builds at once, one slot per builder, 2-second backends")
    print("| backend | builders | wall s | builds/min | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for kind, builders, seconds in rows:
        one = next(s for k, b, s in rows if k == kind and b == 1)
        rate = 60 * args.builds / seconds
        print(f"| {kind} | {builders} | {seconds:.1f} | {rate:.1f} | {one / seconds:.2f}x |")


if __name__ == "__main__":
    main()
