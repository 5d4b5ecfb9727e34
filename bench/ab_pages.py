"""Warm page serving of two wheelfarm revisions, interleaved on one machine: did a change help?

    .venv/bin/python bench/ab_pages.py --before REV [--after REV] [--rounds 3] [--seconds 4]

Checks each revision out into a temporary git worktree (the working tree for ``--after`` by default),
starts ``wheelfarm serve`` from it (PYTHONPATH puts that checkout first) in front of the fake upstream's
600-file project, and drives the warm page with wrk at 128 connections: JSON, HTML and JSON with
``Accept-Encoding: gzip``, with pip's User-Agent. Revisions alternate round by round, so a machine whose
speed drifts (a shared VM) hits both alike; the table gives the median of the rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
from measure import PAGE_REQUESTS, pip_user_agent, run_wrk
from warm_pages import ROOT, big_project_index, start_proxy

sys.path.insert(0, str(ROOT / "tests"))
from fake_upstream import FakeUpstreamServer


@contextlib.contextmanager
def checkout(revision: str | None) -> Iterator[Path]:
    """The source tree of ``revision`` (None: the working tree as it is)."""
    if revision is None:
        yield ROOT
        return
    with tempfile.TemporaryDirectory() as folder:
        tree = Path(folder) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), revision], check=True
        )
        try:
            yield tree
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", required=True, help="git revision to compare against")
    parser.add_argument("--after", help="git revision (default: the working tree)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4)
    args = parser.parse_args()
    user_agent = pip_user_agent()
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    labels = {"before": args.before, "after": args.after or "working tree"}
    with (
        checkout(args.before) as before,
        checkout(args.after) as after,
        FakeUpstreamServer(big_project_index()) as upstream,
    ):
        for _ in range(args.rounds):
            for label, tree in (("before", before), ("after", after)):
                os.environ["PYTHONPATH"] = str(tree)
                with tempfile.TemporaryDirectory() as cache:
                    process, url = start_proxy(upstream.simple_url, Path(cache))
                    try:
                        page = url + "/simple/bigproject/"
                        for kind, headers in PAGE_REQUESTS.items():
                            request_headers = {"User-Agent": user_agent, **headers}
                            httpx.get(page, headers=request_headers).raise_for_status()
                            run_wrk(page, 128, 1, request_headers)  # warm the rendered page and the loop
                            results.setdefault((label, kind), []).append(
                                run_wrk(page, 128, args.seconds, request_headers)
                            )
                    finally:
                        process.terminate()
                        process.wait()
    print(f"warm page, 128 connections, median of {args.rounds} interleaved rounds of {args.seconds} s")
    print("| revision | request | req/s | p99 ms |")
    print("|---|---|---:|---:|")
    for (label, kind), runs in results.items():
        rps = statistics.median(r["rps"] for r in runs)
        p99 = statistics.median(r["p99_ms"] for r in runs)
        print(f"| {label} ({labels[label]}) | {kind} | {rps:,.0f} | {p99:.1f} |")


if __name__ == "__main__":
    main()
