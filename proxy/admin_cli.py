"""``wheelfarm status | cache ... | build ...``: the operator's command line over the admin JSON API.

A small HTTP client on the standard library's urllib (the installed package needs nothing more). Every
command takes ``--url`` (the admin base URL, or ``WHEELFARM_ADMIN_URL``), ``--token`` (or
``WHEELFARM_ADMIN_TOKEN``, the same variable ``wheelfarm serve`` reads its token from) and ``--json`` (the
server's JSON instead of text). Exit codes: 0 done, 1 a build failed (or waiting gave up), 2 a usage, HTTP or
connection error.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import http.client
import json
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote, urljoin, urlsplit

from builder.jobs import BuildKey

COMMANDS = ("status", "cache", "build")
DEFAULT_URL = "http://127.0.0.1:8080/admin/"
URL_ENV = "WHEELFARM_ADMIN_URL"
TOKEN_ENV = "WHEELFARM_ADMIN_TOKEN"
TIMEOUT = 30.0
BUILD_AHEAD_TIMEOUT = 600.0  # the proxy reads each requirement's page (maybe from upstream) before it answers
BUILD_STATES = ("queued", "running", "done", "failed", "orphaned")  # the order counts are shown in
LOG_LINES = 6  # lines of a failed build's log shown under its reason: the last that look like errors
TAIL_BYTES = 64 * 1024  # read from the end of a build log for them
# A Python exception ("RuntimeError: ...") or a compiler's or setuptools' "error: ...".
ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\b|\berror:", re.IGNORECASE)
HEARTBEAT_SECONDS = 30.0  # without a terminal, how often a line says the builds are still running


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1
    ERROR = 2


class AdminError(Exception):
    """A usage, HTTP or connection error: printed as is, exit code 2."""


@dataclasses.dataclass(frozen=True, slots=True)
class AdminClient:
    base_url: str  # ends with "/"
    token: str = ""

    def url(self, path: str) -> str:
        return urljoin(self.base_url, path)

    def get(self, path: str) -> Any:
        return self._send("GET", path)

    def post(self, path: str, body: Mapping[str, Any], timeout: float = TIMEOUT) -> Any:
        return self._send("POST", path, body, timeout)

    def delete(self, path: str) -> Any:
        return self._send("DELETE", path)

    def _send(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, timeout: float = TIMEOUT
    ) -> Any:
        url = self.url(path)
        headers = {"Accept": "application/json", "User-Agent": "wheelfarm-admin-cli"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with self._open(request, timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise AdminError(self._http_error(method, url, exc)) from None
        except urllib.error.URLError as exc:
            raise AdminError(self._unreachable(exc.reason)) from None
        except (OSError, http.client.HTTPException) as exc:
            raise AdminError(self._unreachable(exc)) from None
        try:
            return json.loads(raw)
        except ValueError:
            raise AdminError(f"{url} did not answer JSON: is {self.base_url} the admin base URL?") from None

    def tail(self, path: str) -> list[str]:
        """The end of a text file on the proxy (a build log), in lines; none when it cannot be read."""
        request = urllib.request.Request(self.url(path), headers={"Range": f"bytes=-{TAIL_BYTES}"})
        try:
            with self._open(request, TIMEOUT) as response:
                text = bytes(response.read(TAIL_BYTES)).decode("utf-8", "replace")
                cut = not response.headers.get("Content-Range", "bytes 0-").startswith("bytes 0-")
        except (OSError, http.client.HTTPException):
            return []
        return [line for line in text.splitlines()[1 if cut else 0 :] if line.strip()]

    @staticmethod
    def _open(request: urllib.request.Request, timeout: float) -> http.client.HTTPResponse:
        # HTTP_PROXY and friends are ignored: the bearer token goes to wheelfarm, not via a forward proxy.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        response: http.client.HTTPResponse = opener.open(request, timeout=timeout)
        return response

    def _unreachable(self, reason: object) -> str:
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused (is `wheelfarm serve` running there, with [admin] enabled?)"
        else:
            why = str(getattr(reason, "strerror", None) or reason)
        return f"cannot reach the admin API at {self.base_url}: {why}"

    def _http_error(self, method: str, url: str, exc: urllib.error.HTTPError) -> str:
        body = exc.read().decode("utf-8", "replace").strip()
        try:
            decoded = json.loads(body)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict):
            body = str(decoded.get("error") or decoded.get("message") or body)
        message = f"{method} {url}: HTTP {exc.code} {exc.reason}: {body[:2000]}"
        if exc.code == 401:
            hint = "was refused (wrong token?)" if self.token else f"is missing (--token or {TOKEN_ENV})"
            message += f"\nthe admin token {hint}"
        elif exc.code == 404 and body == "404: Not Found":
            message += (
                f"\nno such admin API here: is {self.base_url} right, and [admin] enabled on the proxy?"
            )
        return message


# --- rendering helpers ---------------------------------------------------------------------------------

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
    rows = [
        ["pages", f"{data['pages']['count']} ({_size(data['pages']['bytes'])})"],
        ["files", f"{files['count']} ({_size(files['bytes'])}{limit}, {files.get('evictions', 0)} evicted)"],
        ["built wheels", f"{built['count']} ({_size(built['bytes'])})"],
        ["hit ratio", f"{ratio} ({outcomes})" if full and outcomes else ratio],
    ]
    if not full:
        rows.append(["builds", _counts(data.get("builds") or {}) or "no builder"])
    return _table(rows, indent="")


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


# --- commands ------------------------------------------------------------------------------------------


def status(client: AdminClient, args: argparse.Namespace, out: TextIO) -> ExitCode:
    data = client.get("api/summary")
    if args.json:
        _json(data, out)
    else:
        out.write(f"wheelfarm admin {client.base_url} (upstream {data.get('upstream')})\n")
        out.write("\n".join(_summary_lines(data, full=args.command == "cache")) + "\n")
    return ExitCode.OK


def cache_show(client: AdminClient, args: argparse.Namespace, out: TextIO) -> ExitCode:
    data = client.get(f"api/projects/{quote(args.project, safe='')}")
    if args.json:
        _json(data, out)
        return ExitCode.OK
    page = data["page"]
    out.write(f"{data['project']}: page fetched {_when(page['fetched_at'])}, serial {page['serial']}, ")
    out.write(f"cache {page['cache']}, {page['files']} files\n")
    rows = [["cached" if f["cached"] else "-", _size(f["bytes"]), f["filename"]] for f in data["files"]]
    out.write("\n".join(_table(rows)) + "\n")
    for target, views in sorted(data["builds"].items()):
        out.write(f"builds for {target}\n")
        rows = [
            [v["state"], _seconds(v["duration_seconds"]), v["sdist"], v["key"]["sdist_sha256"], _outcome(v)]
            for v in views
        ]
        out.write("\n".join(_table(rows)) + "\n")
    return ExitCode.OK


def cache_purge(client: AdminClient, args: argparse.Namespace, out: TextIO) -> ExitCode:
    data = client.post(f"api/projects/{quote(args.project, safe='')}/purge", {"files": args.files})
    if args.json:
        _json(data, out)
        return ExitCode.OK
    removed = data["removed"]
    page = "page forgotten" if removed["page"] else "no cached page"
    out.write(f"purged {data['project']}: {page}, {removed['files']} cached files and ")
    out.write(f"{removed['builds']} builds removed\n")
    return ExitCode.OK


def cache_evict(client: AdminClient, args: argparse.Namespace, out: TextIO) -> ExitCode:
    data = client.post("api/evict", {"unused_for_seconds": args.unused_for * 86400})
    if args.json:
        _json(data, out)
    else:
        out.write(f"evicted {data['evicted_files']} files unused for {args.unused_for:g} days\n")
    return ExitCode.OK


def build_list(client: AdminClient, args: argparse.Namespace, out: TextIO) -> ExitCode:
    data = client.get("api/builds")
    if args.json:
        _json(data, out)
        return ExitCode.OK
    out.write(_counts(data["builds"]) + "\n")
    for title, views in (("active", data["active"]), ("finished", data["finished"])):
        if views:
            out.write(f"{title}\n" + "\n".join(_table([_build_line(v) for v in views])) + "\n")
    return ExitCode.OK


def build_retry(client: AdminClient, args: argparse.Namespace, out: TextIO) -> ExitCode:
    data = client.post(_key_path(args) + "/retry", {})
    if args.json:
        _json(data, out)
    else:
        out.write(f"forgot the failed build of {data['sdist']} for {args.target}: {data['retry']}\n")
    return ExitCode.OK


def build_delete(client: AdminClient, args: argparse.Namespace, out: TextIO) -> ExitCode:
    data = client.delete(_key_path(args))
    if args.json:
        _json(data, out)
    else:
        out.write(f"deleted the build of {args.sdist_sha256} for {args.target}\n")
    return ExitCode.OK


# --- build ahead: start, then watch ---------------------------------------------------------------------


class Phase(enum.Enum):
    STARTED = "started"  # asked for; the proxy not polled yet
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    GONE = "gone"  # deleted (or pruned) on the proxy while we waited
    SKIPPED = "skipped"  # nothing to build: the proxy says why (no sdist matches, not allowed)

    @property
    def finished(self) -> bool:
        return self not in (Phase.STARTED, Phase.QUEUED, Phase.RUNNING)


@dataclasses.dataclass
class Tracked:
    """One requirement of a build-ahead request, and what the proxy last said of its build."""

    requirement: str
    sdist: str
    key: BuildKey | None
    phase: Phase
    note: str = ""
    view: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_started(cls, entry: dict[str, Any]) -> Tracked:
        key = entry.get("key")
        if key is None:
            return cls(entry["requirement"], "", None, Phase.SKIPPED, note=entry["state"])
        return cls(entry["requirement"], entry.get("sdist", ""), BuildKey(**key), Phase.STARTED)

    def update(self, active: dict[BuildKey, Any], finished: dict[BuildKey, Any]) -> bool:
        """Take the proxy's view of this build (active wins: a record is kept just before the job ends)."""
        if self.key is None or self.phase.finished:
            return False
        before = self.phase
        if self.key in active:
            self.view = active[self.key]
            self.phase = Phase.RUNNING if self.view["state"] == "running" else Phase.QUEUED
        elif self.key in finished:
            self.view = finished[self.key]
            self.phase = Phase.DONE if self.view["state"] == "done" else Phase.FAILED
        else:
            self.phase, self.note = Phase.GONE, "the build record is gone (deleted on the proxy?)"
        return self.phase is not before

    def to_json(self) -> dict[str, Any]:
        key = None if self.key is None else dataclasses.asdict(self.key)
        state = {"requirement": self.requirement, "state": self.phase.value, "sdist": self.sdist, "key": key}
        return {**state, "note": self.note, "build": self.view}

    def line(self) -> str:
        elapsed = self.view.get("elapsed_seconds", self.view.get("duration_seconds"))
        if self.phase in (Phase.DONE, Phase.FAILED):
            detail = ("-> " if self.phase is Phase.DONE else "") + _outcome(self.view)
        else:
            detail = self.note or self.sdist
        return (
            f"{self.phase.value:<8} {_seconds(elapsed) if self.view else '':>7}  {self.requirement}  {detail}"
        )


class Watch:
    """Poll ``api/builds`` until every started build is done or failed, showing progress on ``out``.

    On a terminal the lines are redrawn in place (ANSI: cursor up, erase line); otherwise a line is appended
    when a build changes state, and every HEARTBEAT_SECONDS while builds run.
    """

    def __init__(self, client: AdminClient, started: dict[str, Any], out: TextIO, interactive: bool) -> None:
        self.client = client
        self.target: str = started["target"]
        self.builds = [Tracked.from_started(entry) for entry in started["builds"]]
        self.out = out
        self.interactive = interactive
        self._drawn = 0
        self._began = time.monotonic()

    def run(self, interval: float, timeout: float, show: bool) -> ExitCode:
        last_heartbeat = time.monotonic()
        if show and not self.interactive:
            for build in self.builds:
                if build.phase is Phase.SKIPPED:
                    self.out.write(build.line() + "\n")
        while True:
            data = self.client.get("api/builds")
            active = {BuildKey(**v["key"]): v for v in data["active"]}
            finished = {BuildKey(**v["key"]): v for v in data["finished"]}
            changed = [build for build in self.builds if build.update(active, finished)]
            waiting = [build for build in self.builds if not build.phase.finished]
            if show and self.interactive:
                self._draw([self._header(), *(build.line() for build in self.builds)])
            elif show:
                if not changed and waiting and time.monotonic() - last_heartbeat >= HEARTBEAT_SECONDS:
                    changed = waiting
                for build in changed:
                    self.out.write(build.line() + "\n")
                last_heartbeat = time.monotonic() if changed else last_heartbeat
            self.out.flush()
            if not waiting:
                return self._finish(show, gave_up=False)
            if timeout and time.monotonic() - self._began >= timeout:
                return self._finish(show, gave_up=True)
            time.sleep(max(interval, 0.05))

    def _count(self, *phases: Phase) -> int:
        return sum(1 for build in self.builds if build.phase in phases)

    def _header(self) -> str:
        text = ", ".join(f"{self._count(phase)} {phase.value}" for phase in Phase if self._count(phase))
        return f"building for {self.target}: {text} ({_seconds(time.monotonic() - self._began)})"

    def _draw(self, lines: list[str]) -> None:
        width = max(20, shutil.get_terminal_size((100, 24)).columns - 1)
        if self._drawn:
            self.out.write(f"\r\x1b[{self._drawn}A")
        self.out.write("".join(f"\x1b[2K{line[:width]}\n" for line in lines))
        self._drawn = len(lines)

    def _finish(self, show: bool, gave_up: bool) -> ExitCode:
        failed = [b for b in self.builds if b.phase in (Phase.FAILED, Phase.GONE)]
        waiting = [b for b in self.builds if not b.phase.finished]
        if not show:
            entries = [build.to_json() for build in self.builds]
            _json({"target": self.target, "builds": entries}, self.out)
        else:
            for build in failed:
                self._explain(build)
            self.out.write(
                f"{self._count(Phase.DONE)} built, {len(failed)} failed, {self._count(Phase.SKIPPED)} skipped"
                f" for {self.target} in {_seconds(time.monotonic() - self._began)}\n"
            )
            if gave_up:
                self.out.write(
                    f"gave up waiting: {len(waiting)} builds still queued or running on the proxy\n"
                )
        self.out.flush()
        return ExitCode.FAILED if failed or waiting else ExitCode.OK

    def _explain(self, build: Tracked) -> None:
        self.out.write(f"FAILED {build.requirement} ({build.sdist})")
        if build.phase is Phase.GONE or build.key is None:
            self.out.write(f": {build.note}\n")
            return
        self.out.write(f" in {build.view.get('phase')}:\n")
        for line in str(build.view.get("error", "")).splitlines() or ["(no reason given)"]:
            self.out.write(f"    {_printable(line)}\n")
        tail = self.client.tail(build.view["log"])
        if errors := [line for line in tail if ERROR_LINE.search(line)][-LOG_LINES:] or tail[-LOG_LINES:]:
            self.out.write("  from the log:\n" + "".join(f"    | {_printable(line)}\n" for line in errors))
        self.out.write(f"  log:   {self.client.url(build.view['log'])}\n")
        self.out.write(f"  retry: wheelfarm build retry {build.key.sdist_sha256} {build.key.target}\n")


def read_requirements(source: str, seen: frozenset[Path] = frozenset()) -> list[str]:
    """The requirements of a pip requirements file (``-`` is stdin), one per item, as pip reads them:
    backslash continuations joined, comments and per-requirement options (``--hash=...``) dropped, nested
    ``-r`` files read in place, other option lines (``-c``, ``--index-url``, ``-e``) skipped."""
    path = Path(source)
    try:
        text = sys.stdin.read() if source == "-" else path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AdminError(f"cannot read requirements file {source}: {exc.strerror}") from None
    requirements: list[str] = []
    for raw in re.sub(r"\\\r?\n", " ", text).splitlines():
        line = re.sub(r"(^|\s+)#.*$", "", raw).strip()
        nested = re.fullmatch(r"(?:-r|--requirement)(?:\s*=\s*|\s+|(?=[^\s=]))(\S+)", line)
        if nested:
            child = (Path.cwd() if source == "-" else path.parent) / nested.group(1)
            if child.resolve() in seen:
                raise AdminError(f"requirements file {child} includes itself")
            requirements += read_requirements(str(child), seen | {path.resolve()})
        elif line and not line.startswith("-"):
            requirements.append(re.split(r"\s+--?[A-Za-z]", line, maxsplit=1)[0])
    return requirements


def build_ahead(client: AdminClient, args: argparse.Namespace, out: TextIO) -> ExitCode:
    lines = [line for source in args.requirement_files or [] for line in read_requirements(source)]
    if not args.requirements and not lines:
        raise AdminError(
            "build ahead: name requirements (name==version) or a file with -r (nothing to build)"
        )
    body: dict[str, Any] = {"target": args.target, "requirements": args.requirements}
    if lines:
        body["requirements_txt"] = "\n".join(lines) + "\n"
    started = client.post("api/build-ahead", body, timeout=BUILD_AHEAD_TIMEOUT)
    if args.no_wait:
        if args.json:
            _json(started, out)
        else:
            rows = [[b["state"], b["requirement"], b.get("sdist", "")] for b in started["builds"]]
            out.write("\n".join(_table(rows, indent="")) + "\n")
        return ExitCode.OK
    watch = Watch(client, started, out, interactive=not args.json and out.isatty())
    return watch.run(args.interval, args.timeout, show=not args.json)


# --- the command line ---------------------------------------------------------------------------------

Handler = Callable[[AdminClient, argparse.Namespace, TextIO], ExitCode]


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``status``, ``cache ...`` and ``build ...`` under the ``wheelfarm`` command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"admin base URL (default: ${URL_ENV} or {DEFAULT_URL})")
    common.add_argument("--token", help=f"bearer token that admin changes need (default: ${TOKEN_ENV})")
    common.add_argument("--json", action="store_true", help="print the server's JSON instead of text")

    def leaf(group: Any, name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = group.add_parser(
            name, parents=[common], help=help, description=help
        )
        parser.set_defaults(admin_handler=handler)
        return parser

    leaf(commands, "status", status, "what the proxy holds: pages, files, built wheels, hit ratio, builds")
    cache = commands.add_parser("cache", help="inspect and trim the proxy's cache").add_subparsers(
        dest="cache_command", required=True
    )
    leaf(cache, "summary", status, "cached pages and files, built wheels, cache outcomes")
    show = leaf(cache, "show", cache_show, "one project: its page, which files are cached, its builds")
    show.add_argument("project")
    purge = leaf(
        cache, "purge", cache_purge, "forget a project's page (and with --files its files and builds)"
    )
    purge.add_argument("project")
    purge.add_argument("--files", action="store_true", help="also delete its cached files and built wheels")
    evict = leaf(cache, "evict", cache_evict, "delete cached files nobody downloaded for a while")
    evict.add_argument(
        "--unused-for", type=_amount, required=True, metavar="DAYS", help="days (e.g. 30 or 0.5)"
    )

    build = commands.add_parser("build", help="build wheels ahead of time; list, retry, delete builds")
    actions = build.add_subparsers(dest="build_command", required=True)
    ahead = leaf(
        actions, "ahead", build_ahead, "build the sdists of these requirements for a target, and wait"
    )
    ahead.add_argument("requirements", nargs="*", metavar="REQUIREMENT", help="e.g. numpy==2.1.0")
    ahead.add_argument(
        "-r",
        "--requirement",
        dest="requirement_files",
        action="append",
        metavar="FILE",
        help="a pip requirements file, hashes and all (- for stdin); may repeat",
    )
    ahead.add_argument("--target", required=True, help="e.g. cp312-manylinux_2_36_x86_64")
    ahead.add_argument("--no-wait", action="store_true", help="start the builds and return")
    ahead.add_argument(
        "--interval", type=_amount, default=1.0, metavar="SECONDS", help="seconds between polls (default: 1)"
    )
    ahead.add_argument(
        "--timeout",
        type=_amount,
        default=0.0,
        metavar="SECONDS",
        help="stop waiting after SECONDS (default: never)",
    )
    leaf(actions, "list", build_list, "running and finished builds")
    for name, handler, text in (
        ("retry", build_retry, "forget a failed build: the next request for its pending link builds again"),
        ("delete", build_delete, "delete a build record and its wheel"),
    ):
        parser = leaf(actions, name, handler, text)
        parser.add_argument("sdist_sha256", metavar="SDIST_SHA256")
        parser.add_argument("target", metavar="TARGET")


def _amount(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a number, 0 or more")
    return value


def _base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise AdminError(f"--url: {url!r} is not an http(s) URL like {DEFAULT_URL}")
    return url if url.endswith("/") else url + "/"


def run(args: argparse.Namespace, environ: Mapping[str, str] | None = None, out: TextIO | None = None) -> int:
    """Run one admin command; ``environ`` supplies the URL and token when no flag does."""
    env = os.environ if environ is None else environ
    stdout = sys.stdout if out is None else out
    try:
        client = AdminClient(
            _base_url(args.url or env.get(URL_ENV) or DEFAULT_URL), args.token or env.get(TOKEN_ENV, "")
        )
        handler: Handler = args.admin_handler
        return int(handler(client, args, stdout))
    except AdminError as exc:
        stdout.flush()
        print(f"wheelfarm: {_printable(str(exc))}", file=sys.stderr)
        return int(ExitCode.ERROR)
    except KeyboardInterrupt:
        print("\nwheelfarm: stopped waiting; builds already started go on on the proxy", file=sys.stderr)
        return 130
