"""Text for the terminal: sizes, durations, tables, and neutralised control characters (an sdist's build
log must not drive the operator's terminal)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from typing import Any, TextIO

from builder.jobs import BuildState

# Beside the counts of each BuildState, the builds' counts name this one: finished builds whose sdist upstream
# no longer lists (deleted once the retention time has passed).
ORPHANED = "orphaned"
COUNT_ORDER = (*(state.value for state in BuildState), ORPHANED)  # the order counts are shown in


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Text from the proxy with control characters shown as ``cat -v`` does (ESC as ^[): build logs and errors
    come from sdists, which are hostile, and an escape sequence could rewrite the operator's terminal."""
    return _CONTROL.sub(lambda m: "^" + chr((ord(m[0]) + 64) % 128) if ord(m[0]) < 128 else "?", text)


def write_json(data: Any, out: TextIO) -> None:
    """``--json`` output: indented, keys sorted (the same answer prints the same text)."""
    out.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def human_bytes(count: int | None) -> str:
    """A byte count in binary units (``12.3 MiB``); ``-`` when unknown."""
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_seconds(value: float | None) -> str:
    """A duration as ``4.2s``, ``3m07s`` or ``2h05m``; ``-`` when unknown."""
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    minutes, secs = divmod(int(value), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def human_time(timestamp: float | None) -> str:
    """A Unix time in UTC, to the second; ``-`` when unknown."""
    return "-" if timestamp is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Rows as lines of left-aligned columns two spaces apart (rows may be shorter than others)."""
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(max(map(len, rows), default=0))]
    return [indent + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]


def summary_lines(data: dict[str, Any], full: bool) -> list[str]:
    """``api/summary`` as a table: pages, files, built wheels, hit ratio (``full``: with each cache
    outcome's count; otherwise with the build counts)."""
    files, cache, built = data["files"], data["cache"], data["built_wheels"]
    limit = f" of {human_bytes(files['max_bytes'])}" if files.get("max_bytes") else ""
    ratio = "-" if cache.get("hit_ratio") is None else f"{cache['hit_ratio']:.1%}"
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(cache.items()) if k != "hit_ratio")
    trimmed = f"{files.get('evictions', 0)} evicted"
    if files.get("quarantined"):
        trimmed += f", {files['quarantined']} quarantined"
    rows = [
        ["pages", f"{data['pages']['count']} ({human_bytes(data['pages']['bytes'])})"],
        ["files", f"{files['count']} ({human_bytes(files['bytes'])}{limit}, {trimmed})"],
        ["built wheels", f"{built['count']} ({human_bytes(built['bytes'])})"],
        ["hit ratio", f"{ratio} ({outcomes})" if full and outcomes else ratio],
    ]
    if not full:
        rows.append(["builds", build_counts(data.get("builds") or {}) or "no builder"])
    return table(rows, indent="")


def verify_lines(run: dict[str, Any]) -> list[str]:
    """A verify run's report: counts, then the keys of the files it quarantined."""
    counts = (
        f"checked {run['checked']} files ({human_bytes(run['bytes_checked'])}): {run['corrupt']} corrupt, "
        f"{run['missing']} gone meanwhile, {run['unverifiable']} unverifiable"
    )
    if run["state"] != "done":
        counts = f"verifying {run['total']} files, started; so far " + counts
    lines = [counts]
    if run["quarantined"]:
        lines.append(
            "quarantined (moved to files/quarantine/ in the cache folder; fetched again when next asked for):"
        )
        lines += ["  " + printable(str(key)) for key in run["quarantined"]]
    return lines


def build_counts(builds: dict[str, int]) -> str:
    """The build counts of ``api/summary`` or ``api/builds`` on one line, in the order a build goes."""
    order = sorted(builds, key=lambda s: (COUNT_ORDER.index(s) if s in COUNT_ORDER else len(COUNT_ORDER), s))
    return ", ".join(f"{builds[state]} {state}" for state in order)


def build_row(view: dict[str, Any]) -> list[str]:
    """One build of ``api/builds`` as table cells: state, time, project and version, target, sdist sha256,
    outcome."""
    elapsed = human_seconds(view.get("elapsed_seconds", view.get("duration_seconds")))
    name, key = f"{view['project']} {view['version']}", view["key"]
    return [view["state"], elapsed, name, key["target"], key["sdist_sha256"], build_outcome(view)]


def build_outcome(view: dict[str, Any]) -> str:
    """The wheel a build made, or the first line of why it failed."""
    if view.get("wheel"):
        return printable(str(view["wheel"]))
    return printable(f"{view.get('phase')}: {view['error']}".splitlines()[0]) if view.get("error") else ""
