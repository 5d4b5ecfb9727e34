"""Build costs, measured in one run on this machine:

1. a cold install of the native test project through wheelfarm (the build included) against a warm one
   (the built wheel cached), with pip and with uv;
2. the sandbox's overhead: one build of the same sdist by `wheelfarm builder build` in bubblewrap,
   the same without the sandbox, and a plain `pip wheel` of the sdist (pip's own isolated build).

    .venv/bin/python bench/builds.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from clientenv import Client, clean_env  # noqa: E402
from clients import install  # noqa: E402
from dists import PROJECTS_DIR, build_sdist, wheel_metadata  # noqa: E402
from fake_upstream import FakeFile, FakeIndex, FakeUpstreamServer  # noqa: E402
from warm_pages import start_proxy  # noqa: E402

WHEELHOUSE = ROOT / "tests" / ".wheelhouse"


def timed(action: Callable[[], object]) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        sdist = build_sdist(PROJECTS_DIR / "tinynative", "1.0", scratch / "dist")
        index = FakeIndex()
        for wheel in sorted(WHEELHOUSE.glob("*.whl")):
            index.add_file(
                wheel.name.split("-")[0], FakeFile.from_path(wheel, metadata=wheel_metadata(wheel))
            )
        index.add_file("tinynative", FakeFile.from_path(sdist))
        with FakeUpstreamServer(index) as upstream:
            rows = []
            for client in (Client.PIP, Client.UV):
                cold, warm = [], []
                for attempt in range(args.repeat):
                    process, url = start_proxy(
                        upstream.simple_url, scratch / f"cache-{client.value}-{attempt}"
                    )
                    try:
                        for label, sink in (("cold", cold), ("warm", warm)):
                            work = scratch / f"{client.value}-{attempt}-{label}"
                            index_url = url + "/simple/"
                            sink.append(
                                timed(
                                    lambda c=client, i=index_url, w=work: install(
                                        c, i, ["tinynative"], w
                                    ).check()
                                )
                            )
                    finally:
                        process.terminate()
                        process.wait()
                rows.append((client.value, statistics.median(cold), statistics.median(warm)))
            print(f"install of tinynative (C extension) through wheelfarm, median of {args.repeat}")
            print("| client | cold (build included) s | warm (cached wheel) s | ratio |")
            print("|---|---:|---:|---:|")
            for name, cold_s, warm_s in rows:
                print(f"| {name} | {cold_s:.2f} | {warm_s:.2f} | {cold_s / warm_s:.1f}x |")

            process, url = start_proxy(upstream.simple_url, scratch / "cache-builds")
            try:
                plain = url + "/plain/simple/"
                wheelfarm = str(ROOT / ".venv" / "bin" / "wheelfarm")
                env = clean_env(scratch / "home")
                results: dict[str, list[float]] = {"sandboxed": [], "unsandboxed": [], "pip wheel": []}
                for attempt in range(args.repeat + 1):  # the first round warms the proxy's file cache
                    commands = {
                        "sandboxed": [wheelfarm, "builder", "build", str(sdist), "--index-url", plain,
                                      "--out", str(scratch / f"sb-{attempt}")],
                        "unsandboxed": [wheelfarm, "builder", "build", str(sdist), "--index-url", plain,
                                        "--out", str(scratch / f"ns-{attempt}"), "--no-sandbox"],
                        "pip wheel": [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir",
                                      "--index-url", plain, "-w", str(scratch / f"pw-{attempt}"), str(sdist)],
                    }  # fmt: skip
                    for label, command in commands.items():
                        seconds = timed(
                            lambda c=command: subprocess.run(c, env=env, check=True, capture_output=True)
                        )
                        if attempt:
                            results[label].append(seconds)
            finally:
                process.terminate()
                process.wait()
            print(f"\none build of tinynative-1.0.tar.gz, median of {args.repeat} (warm file cache)")
            print("| how | seconds |")
            print("|---|---:|")
            for label, values in results.items():
                print(f"| {label} | {statistics.median(values):.2f} |")


if __name__ == "__main__":
    main()
