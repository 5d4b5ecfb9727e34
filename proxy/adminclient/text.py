"""Text for the terminal: sizes, durations, tables, and neutralised control characters (an sdist's build
log must not drive the operator's terminal)."""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Sequence
from typing import Any, TextIO
from urllib.parse import quote

BUILD_STATES = ("queued", "running", "done", "failed", "orphaned")  # the order counts are shown in


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _printable(text: str) -> str:
    """Text from the proxy with control characters shown as ``cat -v`` does (ESC as ^[): build logs and errors
    come from sdists, which are hostile, and an escape sequence could rewrite the operator's terminal."""
    return _CONTROL.sub(lambda m: "^" + chr((ord(m[0]) + 64) % 128) if ord(m[0]) < 128 else "?", text)


def _json(data: Any, out: TextIO) -> None:
    out.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _size(count: int | None) -> str:
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    minutes, secs = divmod(int(value), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def _when(timestamp: float | None) -> str:
    return "-" if timestamp is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def _table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(max(map(len, rows), default=0))]
    return [indent + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]


def _summary_lines(data: dict[str, Any], full: bool) -> list[str]:
    files, cache, built = data["files"], data["cache"], data["built_wheels"]
    limit = f" of {_size(files['max_bytes'])}" if files.get("max_bytes") else ""
    ratio = "-" if cache.get("hit_ratio") is None else f"{cache['hit_ratio']:.1%}"
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(cache.items()) if k != "hit_ratio")
    trimmed = f"{files.get('evictions', 0)} evicted"
    if files.get("quarantined"):
        trimmed += f", {files['quarantined']} quarantined"
    rows = [
        ["pages", f"{data['pages']['count']} ({_size(data['pages']['bytes'])})"],
        ["files", f"{files['count']} ({_size(files['bytes'])}{limit}, {trimmed})"],
        ["built wheels", f"{built['count']} ({_size(built['bytes'])})"],
        ["hit ratio", f"{ratio} ({outcomes})" if full and outcomes else ratio],
    ]
    if not full:
        rows.append(["builds", _counts(data.get("builds") or {}) or "no builder"])
    return _table(rows, indent="")


def _verify_lines(run: dict[str, Any]) -> list[str]:
    """A verify run's report: counts, then the keys of the files it quarantined."""
    counts = (
        f"checked {run['checked']} files ({_size(run['bytes_checked'])}): {run['corrupt']} corrupt, "
        f"{run['missing']} gone meanwhile, {run['unverifiable']} unverifiable"
    )
    if run["state"] != "done":
        counts = f"verifying {run['total']} files, started; so far " + counts
    lines = [counts]
    if run["quarantined"]:
        lines.append(
            "quarantined (moved to files/quarantine/ in the cache folder; fetched again when next asked for):"
        )
        lines += ["  " + _printable(str(key)) for key in run["quarantined"]]
    return lines


def _counts(builds: dict[str, int]) -> str:
    order = sorted(
        builds, key=lambda s: (BUILD_STATES.index(s) if s in BUILD_STATES else len(BUILD_STATES), s)
    )
    return ", ".join(f"{builds[state]} {state}" for state in order)


def _build_line(view: dict[str, Any]) -> list[str]:
    elapsed = _seconds(view.get("elapsed_seconds", view.get("duration_seconds")))
    name, key = f"{view['project']} {view['version']}", view["key"]
    return [view["state"], elapsed, name, key["target"], key["sdist_sha256"], _outcome(view)]


def _outcome(view: dict[str, Any]) -> str:
    """The wheel a build made, or the first line of why it failed."""
    if view.get("wheel"):
        return _printable(str(view["wheel"]))
    return _printable(f"{view.get('phase')}: {view['error']}".splitlines()[0]) if view.get("error") else ""


def _key_path(args: argparse.Namespace) -> str:
    return f"api/builds/{quote(args.sdist_sha256, safe='')}/{quote(args.target, safe='')}"
