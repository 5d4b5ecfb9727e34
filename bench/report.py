"""Turn results.json into results.md and PNG charts (matplotlib), with ratios and the issue's targets.

bench/.venv/bin/python bench/report.py bench/results/results.json   # re-render without re-running
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

SERVERS = ("wheelfarm", "proxpi", "devpi", "nginx", "bare aiohttp")
COLOURS = {
    "wheelfarm": "#2a7fbf",
    "proxpi": "#e08a2c",
    "devpi": "#5a9e4b",
    "nginx": "#888888",
    "bare aiohttp": "#b9b9d6",
    "local wheels": "#888888",
}
DPI = 72


def write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    lines += _header(results)
    if (out / "findings.md").exists():
        lines += [
            "What the numbers say, with profiles and suggestions: [findings.md](findings.md) (by hand, "
            "for the committed run).",
            "",
        ]
    lines += _targets(results)
    if results.get("pages"):
        lines += _pages(results, out)
    if results.get("files"):
        lines += _files(results, out)
    if results.get("cold"):
        lines += _cold(results, out)
    if results.get("e2e"):
        lines += _e2e(results, out)
    if results.get("sdist"):
        lines += _sdist(results, out)
    if results.get("profiles"):
        lines += _profiles(results)
    (out / "results.md").write_text("\n".join(lines) + "\n")


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def _get(row: dict[str, Any] | None, key: str) -> float | None:
    return None if row is None else row.get(key)


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b or math.isnan(a) or math.isnan(b):
        return "n/a"
    return f"{a / b:.2f}x"


def _header(results: dict[str, Any]) -> list[str]:
    m, d = results["machine"], results["data"]
    start, end = m["loadavg_start"], m.get("loadavg_end", ["?"] * 3)
    lines = [
        "# wheelfarm benchmarks",
        "",
        f"Run `{results['profile']}` on {m['date']}. Everything on 127.0.0.1 of one machine: servers, fake",
        "upstream, load tools and clients share its cores, so absolute numbers are this machine's;",
        "the ratios are the point.",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {m['cpu']}, {m['cores']} cores |",
        f"| memory | {_memory(m['memory'])} |",
        f"| OS | {m['os']}, Linux {m['kernel']}, Python {m['python']} |",
        f"| load average at start / end (1, 5, 15 min) | {_load(start)} / {_load(end)} |",
        *(
            f"| load average as section {name} began | {_load(values)} |"
            for name, values in m.get("loadavg_by_section", {}).items()
        ),
        f"| wheelfarm | {m['wheelfarm']} |",
        f"| peers | {m['peers']}; {m['nginx']} |",
        f"| tools | {m['wrk'].split(' Copyright')[0]}; {m['curl'].split(' (')[0]}; clients {m['clients']} |",
        "",
        f"Data: a project page of {d['page_files']} files (sdists and wheels of 100 KB to 1 MB, plus a "
        f"{d['big_MB']:.0f} MB and a {d['cold_MB']:.0f} MB wheel), {d['e2e_packages']} small real "
        "pure-Python projects in dependency chains, and four sdist-only projects (two with a C extension). "
        "Page requests carry pip's real User-Agent and pip's real `Accept` (JSON) or `Accept: text/html` "
        "(HTML), without Accept-Encoding, plus a third kind (JSON gzip) with the `Accept-Encoding: gzip` pip "
        "and uv send. "
        f"Pages and warm files are measured in {d.get('rounds', 1)} interleaved rounds (every server, then "
        "again) "
        "and each cell shows the median of its rounds, so background load hits every server alike; wrk runs "
        f"{d['wrk_seconds']:g} s per cell and round, with up to 2 threads and a 30 s timeout.",
        "",
    ]
    if results.get("failures"):
        lines += ["**Could not be measured:**", ""]
        lines += [f"- {name}: {reason}" for name, reason in results["failures"].items()]
        lines.append("")
    if results.get("notes"):
        lines += ["Configurations:", ""]
        lines += [f"- {name}: {'; '.join(notes)}" for name, notes in results["notes"].items() if notes]
        lines += [
            "- wheelfarm: `wheelfarm serve` defaults (builder on, sandboxed), logging warning, admin on",
            "- every proxy keeps pages fresh for 2 h (the whole run), so nothing revalidates while measured",
            "",
        ]
    return lines


def _memory(text: str) -> str:
    kib = text.split()[0]
    return f"{int(kib) / 1024**2:.1f} GiB" if kib.isdigit() else text


def _span(values: list[float] | None) -> str:
    return f"{values[0]:,.0f} to {values[1]:,.0f}" if values else ""


def _load(values: Iterable[Any]) -> str:
    return ", ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in values)


# Pages.


def _cell(rows: list[dict[str, Any]], server: str, fmt: str, connections: int) -> dict[str, Any] | None:
    return next(
        (r for r in rows if r["server"] == server and r["format"] == fmt and r["connections"] == connections),
        None,
    )


def _pages(results: dict[str, Any], out: Path) -> list[str]:
    rows = results["pages"]
    served = results.get("pages_served", {})
    lines = [
        "## 1. Warm project page",
        "",
        "| server | format | body | conns | req/s | req/s range | p50 ms | p99 ms | server CPU % | vs nginx "
        "| wheelfarm ÷ this | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        nginx = _cell(rows, "nginx", row["format"], row["connections"])
        ours = _cell(rows, "wheelfarm", row["format"], row["connections"])
        info = served.get(row["server"], {}).get(row["format"], {})
        body = f"{info['bytes'] / 1000:.0f} kB" if info else "same as wheelfarm"
        if info and row["format"] == "JSON gzip" and info.get("encoding") != "gzip":
            body += " (not compressed)"
        errors = row["non_2xx"] + row["socket_errors"] + row.get("upstream_page_fetches", 0)
        lines.append(
            f"| {row['server']} | {row['format']} | {body} | {row['connections']} | {_fmt(row['rps'])} "
            f"| {_span(row.get('rps_range'))} "
            f"| {_fmt(row['p50_ms'], 2)} | {_fmt(row['p99_ms'], 2)} | {_fmt(row.get('server_cpu_pct'))} "
            f"| {_ratio(row['rps'], _get(nginx, 'rps'))} "
            f"| {_ratio(_get(ours, 'rps'), row['rps']) if row['server'] != 'wheelfarm' else ''} "
            f"| {errors} |"
        )
    lines += [
        "",
        "Body: the bytes each server sends for that format (wheelfarm's page carries PEP 700 sizes and "
        "upload times, both metadata keys and provenance; proxpi's and devpi's are smaller). nginx serves "
        "wheelfarm's exact bytes from disk; bare aiohttp (bench/bare_aiohttp.py) sends them from memory "
        "with one handler and nothing else, the best any aiohttp server can do here. JSON gzip: the JSON "
        "request with the `Accept-Encoding: gzip` that pip and uv really send (the other rows send none); "
        "nginx (gzip_static) and bare aiohttp send wheelfarm's stored gzip bytes. Errors: non-2xx "
        "answers, socket errors, and upstream page fetches during the run (0 = really warm). Server CPU: "
        "user + system time of the server's processes during the run, in % of one core (the machine has "
        "two, shared with wrk).",
        "",
        "![requests per second](pages_rps.png)",
        "",
        "![p99 latency](pages_p99.png)",
        "",
    ]
    _bar_chart(out / "pages_rps.png", rows, "rps", "requests/s (log scale)", log=True)
    _bar_chart(out / "pages_p99.png", rows, "p99_ms", "p99 latency ms (log scale)", log=True)
    return lines


def _bar_chart(path: Path, rows: list[dict[str, Any]], key: str, ylabel: str, log: bool) -> None:
    groups = [(fmt, c) for fmt in ("JSON", "HTML", "JSON gzip") for c in (1, 16, 128)]
    servers = [s for s in SERVERS if any(r["server"] == s for r in rows)]
    fig, ax = plt.subplots(figsize=(10, 3.2), dpi=DPI)
    width = 0.8 / max(len(servers), 1)
    for i, server in enumerate(servers):
        values = [(_cell(rows, server, fmt, c) or {}).get(key, 0) for fmt, c in groups]
        ax.bar(
            [g + i * width for g in range(len(groups))], values, width, label=server, color=COLOURS[server]
        )
    ax.set_xticks([g + width * (len(servers) - 1) / 2 for g in range(len(groups))])
    ax.set_xticklabels([f"{fmt} c={c}" for fmt, c in groups], fontsize=8)
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# Files.


def _files(results: dict[str, Any], out: Path) -> list[str]:
    rows = results["files"]
    size = results["data"]["big_MB"]
    lines = [
        f"## 2. Warm file download ({size:.0f} MB wheel)",
        "",
        "| server | clients | aggregate MB/s | range | per-client MB/s | vs nginx | wheelfarm ÷ this "
        "| server CPU % | RSS start → peak MB (main) "
        "| RSS peak MB (process tree) | downloads | failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        nginx = next((r for r in rows if r["server"] == "nginx" and r["clients"] == row["clients"]), None)
        ours = next((r for r in rows if r["server"] == "wheelfarm" and r["clients"] == row["clients"]), None)
        mbps = row["aggregate_MBps"]
        lines.append(
            f"| {row['server']} | {row['clients']} | {_fmt(row['aggregate_MBps'])} "
            f"| {_span(row.get('aggregate_MBps_range'))} | {_fmt(row['per_client_MBps'])} "
            f"| {_ratio(row['aggregate_MBps'], _get(nginx, 'aggregate_MBps'))} "
            f"| {'' if row['server'] == 'wheelfarm' else _ratio(_get(ours, 'aggregate_MBps'), mbps)} "
            f"| {_fmt(row.get('server_cpu_pct'))} "
            f"| {_fmt(row['rss_start_mb'])} → {_fmt(row['rss_peak_mb'])} | {_fmt(row['rss_tree_peak_mb'])} "
            f"| {row['downloads']} | {row['failed']} |"
        )
    lines += [
        "",
        "curl clients writing to /dev/null, each looping over the download for the round's duration "
        "(aggregate: bytes of all clients ÷ wall time; median of the rounds, range across rounds). RSS is "
        "sampled every 50 ms (VmRSS; the tree sums every process of the server: gunicorn master and worker, "
        "nginx master and workers).",
        "",
        "![file throughput](files.png)",
        "",
    ]
    servers = [s for s in SERVERS if any(r["server"] == s for r in rows)]
    fig, ax = plt.subplots(figsize=(6, 3), dpi=DPI)
    for i, clients in enumerate((1, 16)):
        values = [
            next((r["aggregate_MBps"] for r in rows if r["server"] == s and r["clients"] == clients), 0)
            for s in servers
        ]
        ax.bar(
            [x + i * 0.4 for x in range(len(servers))],
            values,
            0.4,
            label=f"{clients} client(s)",
            color=["#2a7fbf", "#9cc3e0"][i],
        )
    ax.set_xticks([x + 0.2 for x in range(len(servers))])
    ax.set_xticklabels(servers)
    ax.set_ylabel("aggregate MB/s")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "files.png")
    plt.close(fig)
    return lines


# Cold.


def _cold(results: dict[str, Any], out: Path) -> list[str]:
    rows = results["cold"]
    d = results["data"]
    lines = [
        f"## 3. Cold file: {rows[0]['clients']} clients at once, one uncached {d['cold_MB']:.0f} MB wheel",
        "",
        f"Upstream paced to about {d['upstream_MBps_cold']:g} MB/s per download. Times in seconds from the "
        "first client's request; 'after upstream' is each client's first byte minus the moment upstream "
        "started sending (its worst client shown). The clients are connections of one asyncio process "
        "(bench/coldclients.py) started together, each reading into its own buffer: threads of one Python "
        "process would wait for each other's GIL and time themselves. Times are CLOCK_MONOTONIC, which the "
        "clients and the fake upstream process share.",
        "",
        "| server | upstream downloads | clients OK | clients redirected | upstream first → last byte "
        "| client first byte min / p50 / max "
        "| client last byte min / p50 / max | worst first byte after upstream, ms | RSS peak MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        fb, lb = row["first_byte_s"], row["last_byte_s"]
        lines.append(
            f"| {row['server']} | {row['upstream_downloads']} | {row['ok']}/{row['clients']} "
            f"| {sum(1 for c in row['per_client'] if c.get('redirects'))} "
            f"| {_fmt(row['upstream_first_byte_s'], 2)} → {_fmt(row['upstream_last_byte_s'], 2)} "
            f"| {_fmt(fb['min'], 2)} / {_fmt(fb['p50'], 2)} / {_fmt(fb['max'], 2)} "
            f"| {_fmt(lb['min'], 2)} / {_fmt(lb['p50'], 2)} / {_fmt(lb['max'], 2)} "
            f"| {_fmt(row['max_after_upstream_ms'])} | {_fmt(row['rss_peak_mb'])} |"
        )
    statuses = {row["server"]: Counter(c["status"] for c in row["per_client"]) for row in rows}
    lines += [
        "",
        "HTTP statuses seen by the clients (after following redirects): "
        + "; ".join(f"{s}: {dict(c)}" for s, c in statuses.items()),
        "",
        "![cold file](cold.png)",
        "",
    ]
    fig, axes = plt.subplots(1, len(rows), figsize=(3 * len(rows), 3), dpi=DPI, sharey=False, squeeze=False)
    for ax, row in zip(axes[0], rows, strict=True):
        clients = sorted(row["per_client"], key=lambda c: c["first_byte_s"])
        xs = range(len(clients))
        ax.vlines(
            xs,
            [c["first_byte_s"] for c in clients],
            [c["last_byte_s"] for c in clients],
            color=COLOURS[row["server"]],
            linewidth=1.5,
        )
        ax.scatter(xs, [c["first_byte_s"] for c in clients], s=6, color="black", zorder=3)
        ax.axhline(row["upstream_first_byte_s"], color="red", linewidth=0.8, linestyle="--")
        ax.set_title(f"{row['server']} ({row['upstream_downloads']} upstream)", fontsize=9)
        ax.set_xlabel("client")
    axes[0][0].set_ylabel("s: first byte (dot) to last")
    fig.tight_layout()
    fig.savefig(out / "cold.png")
    plt.close(fig)
    return lines


# End to end.


def _e2e(results: dict[str, Any], out: Path) -> list[str]:
    runs = [r for r in results["e2e"] if not r["warmup"]]
    names = list(dict.fromkeys(r["server"] for r in runs))
    table = {
        (n, c): [r for r in runs if r["server"] == n and r["client"] == c]
        for n in names
        for c in ("pip", "uv")
    }
    med = {k: statistics.median(r["seconds"] for r in v) if v else None for k, v in table.items()}
    n_packages = results["data"]["e2e_packages"]
    lines = [
        f"## 4. End to end: install {n_packages} packages into a fresh venv (warm proxies, no client cache)",
        "",
        "| source | client | median s | min s | max s | vs local wheels | this ÷ wheelfarm | failed runs |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (name, client), rs in table.items():
        if not rs:
            continue
        failed = sum(1 for r in rs if not r["ok"] or r["installed"] != n_packages)
        lines.append(
            f"| {name} | {client} | {_fmt(med[(name, client)], 2)} "
            f"| {_fmt(min(r['seconds'] for r in rs), 2)} | {_fmt(max(r['seconds'] for r in rs), 2)} "
            f"| {_ratio(med[(name, client)], med.get(('local wheels', client)))} "
            f"| {_ratio(med[(name, client)], med.get(('wheelfarm', client))) if name != 'wheelfarm' else ''} "
            f"| {failed} |"
        )
    lines += [
        "",
        "pip: `pip install --no-cache-dir --index-url URL ...`; uv: `uv pip install --no-cache ...`; local "
        "wheels: `--no-index --find-links DIR`; nginx: a static PEP 503 index with PEP 658 metadata. One "
        "unmeasured round first warms every proxy.",
        "",
        "![end to end](e2e.png)",
        "",
    ]
    fig, ax = plt.subplots(figsize=(7, 3), dpi=DPI)
    for i, client in enumerate(("pip", "uv")):
        values = [med.get((n, client)) or 0 for n in names]
        ax.bar(
            [x + i * 0.4 for x in range(len(names))],
            values,
            0.4,
            label=client,
            color=["#2a7fbf", "#9cc3e0"][i],
        )
    ax.set_xticks([x + 0.2 for x in range(len(names))])
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylabel("median seconds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "e2e.png")
    plt.close(fig)
    return lines


# Sdist-only.


def _sdist(results: dict[str, Any], out: Path) -> list[str]:
    data = results["sdist"]
    runs = data["runs"]
    names = list(dict.fromkeys(r["server"] for r in runs))
    med = {
        (n, c): statistics.median(r["seconds"] for r in runs if r["server"] == n and r["client"] == c)
        for n in names
        for c in ("pip", "uv")
        if any(r["server"] == n and r["client"] == c for r in runs)
    }
    base = "client builds (sdists from upstream)"
    lines = [
        "## 5. Sdist-only projects: 4 sdists (2 pure, 2 with a C extension)",
        "",
        "| source | client | median s | speed-up vs building on the client | failed runs | client built |",
        "|---|---|---:|---:|---:|---|",
    ]
    for (name, client), seconds in med.items():
        rs = [r for r in runs if r["server"] == name and r["client"] == client]
        lines.append(
            f"| {name} | {client} | {_fmt(seconds, 2)} | {_ratio(med.get((base, client)), seconds)} "
            f"| {sum(not r['ok'] for r in rs)} | {'yes' if any(r['built_on_client'] for r in rs) else 'no'} |"
        )
    ahead = data.get("build_ahead", {})
    if ahead:
        builds = ", ".join(
            f"{b['project']} {b['state']} in {b['duration_seconds']} s" for b in ahead.get("builds", [])
        )
        lines += [
            "",
            f"wheelfarm built ahead (`POST /admin/api/build-ahead`, target {ahead.get('target')}): {builds}; "
            f"{_fmt(ahead.get('wall_s', float('nan')), 1)} s in all. "
            "The warm installs use `--only-binary :all:`, "
            "so a client that had to build would fail.",
        ]
    lines += ["", "![sdist-only](sdist.png)", ""]
    fig, ax = plt.subplots(figsize=(6, 3), dpi=DPI)
    for i, client in enumerate(("pip", "uv")):
        values = [med.get((n, client), 0) for n in names]
        ax.bar(
            [x + i * 0.4 for x in range(len(names))],
            values,
            0.4,
            label=client,
            color=["#2a7fbf", "#9cc3e0"][i],
        )
    ax.set_xticks([x + 0.2 for x in range(len(names))])
    ax.set_xticklabels([n.split(" (")[0] for n in names], fontsize=8)
    ax.set_ylabel("median seconds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "sdist.png")
    plt.close(fig)
    return lines


# Targets.


def _targets(results: dict[str, Any]) -> list[str]:
    checks: list[tuple[str, str, bool | None]] = []
    pages = results.get("pages") or []
    for fmt in ("JSON", "HTML", "JSON gzip"):
        ours = _cell(pages, "wheelfarm", fmt, 128)
        if ours is None:
            continue
        for peer, factor in (("proxpi", 3), ("devpi", 5)):
            other = _cell(pages, peer, fmt, 128)
            if other:
                ratio = ours["rps"] / other["rps"]
                checks.append(
                    (f"{fmt} page, 128 conns: ≥{factor}x {peer}'s req/s", f"{ratio:.2f}x", ratio >= factor)
                )
        checks.append(
            (f"{fmt} page: p99 < 20 ms at 128 conns", f"{ours['p99_ms']:.1f} ms", ours["p99_ms"] < 20)
        )
        nginx = _cell(pages, "nginx", fmt, 128)
        if nginx:
            ratio = ours["rps"] / nginx["rps"]
            checks.append((f"{fmt} page, 128 conns: ≥ 1/3 of nginx's req/s", f"{ratio:.2f}", ratio >= 1 / 3))
    files = results.get("files") or []
    for clients in (1, 16):
        ours_f = next((r for r in files if r["server"] == "wheelfarm" and r["clients"] == clients), None)
        nginx_f = next((r for r in files if r["server"] == "nginx" and r["clients"] == clients), None)
        if ours_f and nginx_f and nginx_f["aggregate_MBps"]:
            ratio = ours_f["aggregate_MBps"] / nginx_f["aggregate_MBps"]
            checks.append((f"warm file x{clients}: ≥ 80% of nginx", f"{ratio:.0%}", ratio >= 0.8))
        if ours_f:
            checks.append(
                (
                    f"warm file x{clients}: RSS < 150 MB",
                    f"{ours_f['rss_peak_mb']:.0f} MB",
                    ours_f["rss_peak_mb"] < 150,
                )
            )
    cold = next((r for r in results.get("cold") or [] if r["server"] == "wheelfarm"), None)
    if cold:
        checks.append(
            (
                "cold: exactly one upstream download",
                str(cold["upstream_downloads"]),
                cold["upstream_downloads"] == 1,
            )
        )
        checks.append(
            (
                "cold: every first byte ≤ 100 ms after upstream's",
                f"worst {cold['max_after_upstream_ms']:.0f} ms",
                cold["max_after_upstream_ms"] <= 100 and cold["ok"] == cold["clients"],
            )
        )
    runs = [r for r in results.get("e2e") or [] if not r["warmup"]]
    for client in ("pip", "uv"):
        ours_s = [r["seconds"] for r in runs if r["server"] == "wheelfarm" and r["client"] == client]
        local = [r["seconds"] for r in runs if r["server"] == "local wheels" and r["client"] == client]
        if ours_s and local:
            ratio = statistics.median(ours_s) / statistics.median(local)
            checks.append((f"end to end ({client}): ≤ 1.2x local wheel dir", f"{ratio:.2f}x", ratio <= 1.2))
    sdist_runs = (results.get("sdist") or {}).get("runs", [])
    for client in ("pip", "uv"):
        ours_s = [
            r["seconds"] for r in sdist_runs if r["server"].startswith("wheelfarm") and r["client"] == client
        ]
        base = [
            r["seconds"] for r in sdist_runs if r["server"].startswith("client") and r["client"] == client
        ]
        if ours_s and base:
            ratio = statistics.median(base) / statistics.median(ours_s)
            checks.append(
                (f"sdist-only ({client}): ≥ 5x faster than client builds", f"{ratio:.1f}x", ratio >= 5)
            )
    if not checks:
        return []
    lines = ["## Targets (wheelfarm)", "", "| target | measured | |", "|---|---:|---|"]
    lines += [f"| {name} | {value} | {'met' if ok else '**missed**'} |" for name, value, ok in checks]
    nginx = _cell(pages, "nginx", "JSON", 128)
    if nginx:
        lines += [
            "",
            "wrk's 128 connections are a closed loop, so mean latency ≈ 128 ÷ req/s (Little's law): a "
            "p99 under 20 ms needs well over 6,400 req/s, and nginx itself shows a p99 of "
            f"{nginx['p99_ms']:.1f} ms at {nginx['rps']:,.0f} req/s here.",
        ]
    bare = _cell(pages, "bare aiohttp", "JSON", 128)
    if bare:
        lines += [
            "A bare aiohttp server sending the same JSON bytes from memory, with no work of its own, shows "
            f"a p99 of {bare['p99_ms']:.1f} ms at {bare['rps']:,.0f} req/s: the floor of the framework "
            "wheelfarm is built on, on this machine.",
        ]
    return [*lines, ""]


# Profiles.


# Leaf frames of threads that wait (py-spy counts a thread blocked in these as active): left out.
IDLE_FRAMES = frozenset({"_worker (futures/thread.py)", "EpollSelector.select (selectors.py)"})


def summarise_profile(raw: str, top: int = 12) -> dict[str, Any]:
    """py-spy raw (collapsed) stacks -> the functions with the most samples, on-CPU (self) and inclusive."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        if frames[-1] in IDLE_FRAMES:
            continue
        total += count
        own[frames[-1]] += count
        packages[_package(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count
    return {
        "samples": total,
        "self": [(f, round(100 * c / total, 1)) for f, c in own.most_common(top)] if total else [],
        "packages": [(p, round(100 * c / total, 1)) for p, c in packages.most_common(8)] if total else [],
        "inclusive": [(f, round(100 * c / total, 1)) for f, c in inclusive.most_common(top * 2)]
        if total
        else [],
    }


def _package(frame: str) -> str:
    """`f (aiohttp/web_protocol.py)` -> aiohttp; the Python package a frame's file belongs to."""
    match = re.search(r"\((.*?)/", frame)
    return match.group(1) if match else frame


def _frame(frame: str) -> str:
    match = re.match(r"(.*) \((.*?):\d+\)$", frame.strip())
    if not match:
        return frame.strip()
    function, path = match.groups()
    parts = path.split("/")
    return f"{function} ({'/'.join(parts[-2:])})"


def _profiles(results: dict[str, Any]) -> list[str]:
    lines = [
        "## Where wheelfarm spends its time",
        "",
        "py-spy at 250 Hz, active threads only (thread-pool workers waiting for work and the event loop "
        "waiting in epoll are left out), in a separate run after the measurements. Raw stacks: "
        "`profile-*.collapsed.txt.gz` (gunzip; flamegraph.pl or speedscope read them).",
        "",
    ]
    for label, data in results["profiles"].items():
        lines += [f"### {label} ({data['samples']} samples)", ""]
        if data.get("packages"):
            shares = ", ".join(f"{name} {pct}%" for name, pct in data["packages"])
            lines += [f"On-CPU samples by package of the innermost frame: {shares}.", ""]
        lines += ["| self % | function |", "|---:|---|"]
        lines += [f"| {pct} | `{name}` |" for name, pct in data["self"]]
        lines += ["", "| inclusive % | function |", "|---:|---|"]
        lines += [f"| {pct} | `{name}` |" for name, pct in data["inclusive"]]
        lines.append("")
    return lines


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results" / "results.json"
    write(json.loads(path.read_text()), path.parent)


if __name__ == "__main__":
    main()
