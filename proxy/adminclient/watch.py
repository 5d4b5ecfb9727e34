"""``wheelfarm build ahead``: start builds through the admin API, then watch them to the end, with a
progress display redrawn in place on a terminal and plain lines otherwise."""

from __future__ import annotations

import argparse
import dataclasses
import enum
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from builder.jobs import BuildKey, BuildState
from proxy.adminclient.http import BUILD_AHEAD_TIMEOUT, AdminClient, AdminError, ExitCode
from proxy.adminclient.text import build_outcome, human_seconds, printable, table, write_json
from proxy.builds.requirementsfile import Include, requirement_items

LOG_LINES = 6  # lines of a failed build's log shown under its reason: the last that look like errors
# A Python exception ("RuntimeError: ...") or a compiler's or setuptools' "error: ...".
ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\b|\berror:", re.IGNORECASE)
HEARTBEAT_SECONDS = 30.0  # without a terminal, how often a line says the builds are still running


class WatchState(enum.Enum):
    """What only the watch knows of a build; the proxy's own states are BuildState."""

    STARTED = "started"  # asked for; the proxy not polled yet
    GONE = "gone"  # deleted (or pruned) on the proxy while we waited
    SKIPPED = "skipped"  # nothing to build: the proxy says why (no sdist matches, not allowed)

    @property
    def finished(self) -> bool:
        return self is not WatchState.STARTED


# The order the header counts builds in: the way a build goes.
STATE_ORDER: tuple[BuildState | WatchState, ...] = (
    WatchState.STARTED,
    *BuildState,
    WatchState.GONE,
    WatchState.SKIPPED,
)


@dataclasses.dataclass
class Tracked:
    """One requirement of a build-ahead request, and what the proxy last said of its build."""

    requirement: str
    sdist: str
    key: BuildKey | None
    state: BuildState | WatchState
    note: str = ""
    view: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_started(cls, entry: dict[str, Any]) -> Tracked:
        key = entry.get("key")
        if key is None:
            return cls(entry["requirement"], "", None, WatchState.SKIPPED, note=entry["state"])
        return cls(entry["requirement"], entry.get("sdist", ""), BuildKey(**key), WatchState.STARTED)

    def update(self, active: dict[BuildKey, Any], finished: dict[BuildKey, Any]) -> bool:
        """Take the proxy's view of this build (active wins: a record is kept just before the job ends)."""
        if self.key is None or self.state.finished:
            return False
        before = self.state
        view = active.get(self.key, finished.get(self.key))
        if view is None:
            self.state, self.note = WatchState.GONE, "the build record is gone (deleted on the proxy?)"
        else:
            self.view, self.state = view, BuildState(view["state"])
        return self.state is not before

    def to_json(self) -> dict[str, Any]:
        key = None if self.key is None else dataclasses.asdict(self.key)
        state = {"requirement": self.requirement, "state": self.state.value, "sdist": self.sdist, "key": key}
        return {**state, "note": self.note, "build": self.view}

    def line(self) -> str:
        elapsed = self.view.get("elapsed_seconds", self.view.get("duration_seconds"))
        if self.state in (BuildState.DONE, BuildState.FAILED):
            detail = ("-> " if self.state is BuildState.DONE else "") + build_outcome(self.view)
        else:
            detail = self.note or self.sdist
        shown = human_seconds(elapsed) if self.view else ""
        return f"{self.state.value:<8} {shown:>7}  {self.requirement}  {detail}"


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
                if build.state is WatchState.SKIPPED:
                    self.out.write(build.line() + "\n")
        while True:
            data = self.client.get("api/builds")
            active = {BuildKey(**v["key"]): v for v in data["active"]}
            finished = {BuildKey(**v["key"]): v for v in data["finished"]}
            changed = [build for build in self.builds if build.update(active, finished)]
            waiting = [build for build in self.builds if not build.state.finished]
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

    def _count(self, *states: BuildState | WatchState) -> int:
        return sum(1 for build in self.builds if build.state in states)

    def _header(self) -> str:
        text = ", ".join(f"{self._count(state)} {state.value}" for state in STATE_ORDER if self._count(state))
        return f"building for {self.target}: {text} ({human_seconds(time.monotonic() - self._began)})"

    def _draw(self, lines: list[str]) -> None:
        width = max(20, shutil.get_terminal_size((100, 24)).columns - 1)
        if self._drawn:
            self.out.write(f"\r\x1b[{self._drawn}A")
        self.out.write("".join(f"\x1b[2K{line[:width]}\n" for line in lines))
        self._drawn = len(lines)

    def _finish(self, show: bool, gave_up: bool) -> ExitCode:
        failed = [b for b in self.builds if b.state in (BuildState.FAILED, WatchState.GONE)]
        waiting = [b for b in self.builds if not b.state.finished]
        if not show:
            entries = [build.to_json() for build in self.builds]
            write_json({"target": self.target, "builds": entries}, self.out)
        else:
            for build in failed:
                self._explain(build)
            built, skipped = self._count(BuildState.DONE), self._count(WatchState.SKIPPED)
            self.out.write(
                f"{built} built, {len(failed)} failed, {skipped} skipped"
                f" for {self.target} in {human_seconds(time.monotonic() - self._began)}\n"
            )
            if gave_up:
                self.out.write(
                    f"gave up waiting: {len(waiting)} builds still queued or running on the proxy\n"
                )
        self.out.flush()
        return ExitCode.FAILED if failed or waiting else ExitCode.OK

    def _explain(self, build: Tracked) -> None:
        self.out.write(f"FAILED {build.requirement} ({build.sdist})")
        if build.state is WatchState.GONE or build.key is None:
            self.out.write(f": {build.note}\n")
            return
        self.out.write(f" in {build.view.get('phase')}:\n")
        for line in str(build.view.get("error", "")).splitlines() or ["(no reason given)"]:
            self.out.write(f"    {printable(line)}\n")
        tail = self.client.tail(build.view["log"])
        if errors := [line for line in tail if ERROR_LINE.search(line)][-LOG_LINES:] or tail[-LOG_LINES:]:
            self.out.write("  from the log:\n" + "".join(f"    | {printable(line)}\n" for line in errors))
        self.out.write(f"  log:   {self.client.url(build.view['log'])}\n")
        self.out.write(f"  retry: wheelfarm build retry {build.key.sdist_sha256} {build.key.target}\n")


def read_requirements(source: str, seen: frozenset[Path] = frozenset()) -> list[str]:
    """The requirements of a pip requirements file (``-`` is stdin), one per item, as pip reads them
    (proxy/builds/requirementsfile.py), with nested ``-r`` files read in place."""
    path = Path(source)
    try:
        text = sys.stdin.read() if source == "-" else path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AdminError(f"cannot read requirements file {source}: {exc.strerror}") from None
    requirements: list[str] = []
    for item in requirement_items(text):
        if isinstance(item, Include):
            child = (Path.cwd() if source == "-" else path.parent) / item.path
            if child.resolve() in seen:
                raise AdminError(f"requirements file {child} includes itself")
            requirements += read_requirements(str(child), seen | {path.resolve()})
        else:
            requirements.append(item)
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
            write_json(started, out)
        else:
            rows = [[b["state"], b["requirement"], b.get("sdist", "")] for b in started["builds"]]
            out.write("\n".join(table(rows, indent="")) + "\n")
        return ExitCode.OK
    watch = Watch(client, started, out, interactive=not args.json and out.isatty())
    return watch.run(args.interval, args.timeout, show=not args.json)
