"""wheelfarm against proxpi, devpi-server and nginx (the physical limit), all on loopback: `make bench`.

    bench/.venv/bin/python bench/run.py [--quick] [--only pages,files,cold,e2e,sdist] [--profile]

Generates the data (bench/dataset.py), serves it from a fake upstream process (bench/upstream.py), starts
every server with an empty cache, warms them from the same upstream, measures (bench/measure.py) and writes
bench/results/results.json, results.md and PNG charts (bench/report.py). A server that cannot be set up is
reported as such; nothing is estimated. Pages are also measured on a bare aiohttp server
(bench/bare_aiohttp.py) that sends the same bytes with no other work: the floor of the framework wheelfarm
is built on. --profile also records py-spy profiles of wheelfarm under page and file load (after the
measurements, so they do not disturb them). Scratch space: bench/.work/.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gzip
import hashlib
import html
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import launch
import measure
import report
from dataset import BIG_PROJECT, PROFILES, ensure
from launch import ADMIN_TOKEN, BENCH, MAIN_BIN, Server

SECTIONS = ("pages", "files", "cold", "e2e", "sdist")
PROXIES = ("wheelfarm", "proxpi", "devpi")
BARE = "bare aiohttp"  # pages only: the same bytes through aiohttp with no work (the framework's floor)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.quick: bool = args.quick
        self.profile = PROFILES["quick" if args.quick else "full"]
        self.sections: list[str] = args.only.split(",") if args.only else list(SECTIONS)
        self.rounds = 1 if self.quick else 3  # pages and files: interleaved rounds, median reported
        self.wrk_seconds = 2.0 if self.quick else 4.0
        self.file_seconds = 1.0 if self.quick else 3.0
        self.repeats = 1 if self.quick else 5  # installs: runs per (source, client), median reported
        self.cold_clients = 50
        self.upstream_mbps = 20.0 if self.quick else 100.0
        self.work = BENCH / ".work" / "run"
        self.out: Path = args.out
        self.results: dict[str, Any] = {
            "profile": self.profile.name,
            "sections": self.sections,
            "failures": {},
            "notes": {},
        }
        self.servers: dict[str, Server] = {}
        self.urls: dict[str, dict[str, str]] = {}  # server -> big/cold file URL
        self.user_agent = measure.pip_user_agent()

    # Set-up.

    def run(self) -> None:
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        log(f"data ({self.profile.name})")
        self.manifest = ensure(self.profile, BENCH / ".work" / f"data-{self.profile.name}")
        self.results["machine"] = machine()
        self.results["data"] = {
            "page_files": sum(f.project == BIG_PROJECT for f in self.manifest.files),
            "big_MB": self.manifest.file(self.manifest.big).size / 1e6,
            "cold_MB": self.manifest.file(self.manifest.cold).size / 1e6,
            "e2e_packages": len(self.manifest.e2e_requirements),
            "upstream_MBps_cold": self.upstream_mbps,
            "wrk_seconds": self.wrk_seconds,
            "file_seconds": self.file_seconds,
            "rounds": self.rounds,
            "user_agent": self.user_agent,
        }
        with contextlib.ExitStack() as stack:
            self.upstream = stack.enter_context(self.fake_upstream())
            for name, start in (
                ("wheelfarm", launch.start_wheelfarm),
                ("proxpi", launch.start_proxpi),
                ("devpi", launch.start_devpi),
            ):
                self.start(
                    stack, name, functools.partial(start, f"{self.upstream}/simple/", self.work / name)
                )
            self.warm()
            self.nginx_root()
            self.start(
                stack, "nginx", lambda: launch.start_nginx(self.work / "nginx-root", self.work / "nginx")
            )
            if "pages" in self.sections:
                self.start(
                    stack,
                    BARE,
                    lambda: launch.start_bare_aiohttp(self.work / "nginx-root" / "pages", self.work / "bare"),
                )
            if "nginx" in self.servers:
                self.urls["nginx"] = {
                    k: f"{self.servers['nginx'].origin}/files/{v}"
                    for k, v in (("big", self.manifest.big), ("cold", self.manifest.cold))
                }
            self.results["notes"] = {name: server.notes for name, server in self.servers.items()}
            for section in self.sections:
                log(f"section {section}")
                self.results["machine"].setdefault("loadavg_by_section", {})[section] = os.getloadavg()
                getattr(self, f"section_{section}")()
                self.save()
            if self.profiling:
                self.profile_wheelfarm()
        self.results["machine"]["loadavg_end"] = os.getloadavg()
        self.save()
        report.write(self.results, self.out)
        log(f"results in {self.out}")

    profiling = False

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1, default=str))

    @contextlib.contextmanager
    def fake_upstream(self) -> Iterator[str]:
        port_file = self.work / "upstream.port"
        manifest = BENCH / ".work" / f"data-{self.profile.name}" / "manifest.json"
        with (self.work / "upstream.log").open("wb") as out:
            process = subprocess.Popen(
                [str(MAIN_BIN / "python"), str(BENCH / "upstream.py"), str(manifest), str(port_file)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            for _ in range(600):
                if port_file.exists() and port_file.read_text():
                    break
                if process.poll() is not None:
                    raise RuntimeError(f"fake upstream exited: {(self.work / 'upstream.log').read_text()}")
                time.sleep(0.1)
            url = f"http://127.0.0.1:{port_file.read_text()}"
            launch.wait_ready(f"{url}/_bench/stats", process)
            yield url
        finally:
            process.terminate()
            process.wait(30)

    def start(self, stack: contextlib.ExitStack, name: str, starter: Callable[[], Server]) -> None:
        log(f"start {name}")
        try:
            server = starter()
        except Exception as exc:  # a peer that cannot be set up is reported, the others go on
            self.results["failures"][name] = f"could not start: {exc}"[:2000]
            log(f"  {name} failed: {exc}")
            return
        stack.callback(server.stop)
        self.servers[name] = server

    def headers(self, accept: str) -> dict[str, str]:
        return {"Accept": accept, "User-Agent": self.user_agent}

    def warm(self) -> None:
        """Every proxy fetches the big page (both formats) and the 200 MB wheel once."""
        page_info: dict[str, Any] = {}
        for name in PROXIES:
            server = self.servers.get(name)
            if server is None:
                continue
            try:
                info: dict[str, Any] = {}
                for fmt, accept in measure.FORMATS.items():
                    response = httpx.get(
                        server.page_url(BIG_PROJECT),
                        headers=self.headers(accept),
                        timeout=300,
                        follow_redirects=True,
                    )
                    response.raise_for_status()
                    info[fmt] = {
                        "content_type": response.headers.get("content-type", ""),
                        "bytes": len(response.content),
                    }
                    if name == "wheelfarm":
                        (self.work / f"page.{fmt.lower()}").write_bytes(response.content)
                    if fmt == "HTML":
                        self.urls[name] = {
                            key: find_link(str(response.url), response.text, filename)
                            for key, filename in (("big", self.manifest.big), ("cold", self.manifest.cold))
                        }
                info["JSON gzip"] = self.compressed_page(server, name == "wheelfarm")
                page_info[name] = info
                log(f"  warm {name}: 200 MB wheel")
                transfer = measure.curl(self.urls[name]["big"])
                if transfer.status != 200 or transfer.size != self.manifest.file(self.manifest.big).size:
                    raise RuntimeError(f"warming download of the big wheel: {transfer}")
            except Exception as exc:
                self.results["failures"][name] = f"warming failed: {exc}"[:2000]
                log(f"  {name} warming failed: {exc}")
                self.servers.pop(name).stop()
        self.results["pages_served"] = page_info

    def compressed_page(self, server: Server, keep: bool) -> dict[str, Any]:
        """The JSON page as pip asks for it (Accept-Encoding: gzip): its size on the wire and encoding."""
        headers = {**self.headers(measure.PIP_ACCEPT), "Accept-Encoding": "gzip"}
        url = server.page_url(BIG_PROJECT)
        with httpx.stream("GET", url, headers=headers, timeout=300, follow_redirects=True) as response:
            response.raise_for_status()
            raw = b"".join(response.iter_raw())
        encoding = response.headers.get("content-encoding", "")
        if keep and encoding == "gzip":
            (self.work / "page.json.gz").write_bytes(raw)
        content_type = response.headers.get("content-type", "")
        return {"content_type": content_type, "bytes": len(raw), "encoding": encoding}

    def nginx_root(self) -> None:
        """The tree nginx serves: wheelfarm's page bytes, the data files, and a static PEP 503 index."""
        root = self.work / "nginx-root"
        (root / "pages").mkdir(parents=True)
        for fmt in ("json", "html", "json.gz"):  # nginx's gzip_static and bare aiohttp send the .gz twin
            page = self.work / f"page.{fmt}"
            if page.exists():
                shutil.copyfile(page, root / "pages" / f"{BIG_PROJECT}.{fmt}")
        (root / "files").symlink_to(Path(self.manifest.files[0].path).parent)
        projects: dict[str, list[str]] = {}
        for entry in self.manifest.files:
            if entry.project == BIG_PROJECT:
                continue
            attrs = (
                f'href="../../files/{entry.filename}#sha256={entry.sha256}" data-requires-python="&gt;=3.8"'
            )
            if entry.metadata:
                digest = "sha256=" + file_sha256(Path(entry.metadata))
                attrs += f' data-dist-info-metadata="{digest}" data-core-metadata="{digest}"'
            projects.setdefault(entry.project, []).append(f"<a {attrs}>{html.escape(entry.filename)}</a><br>")
        for project, links in projects.items():
            folder = root / "simple" / project
            folder.mkdir(parents=True)
            body = "\n".join(["<!DOCTYPE html><html><body>", *links, "</body></html>"])
            (folder / "index.html").write_text(body)
        # the local wheel directory the clients install from without any server
        local = self.work / "wheels"
        local.mkdir()
        for entry in self.manifest.files:
            if entry.project in self.manifest.e2e_requirements and entry.filename.endswith(".whl"):
                (local / entry.filename).symlink_to(entry.path)

    # Sections.

    def section_pages(self) -> None:
        """wrk on every (server, format, connections) cell, in interleaved rounds: load from other work on
        the machine then spreads over all servers alike; each cell reports the median of its rounds."""
        runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        for round_ in range(self.rounds):
            for name in (*PROXIES, "nginx", BARE):
                server = self.servers.get(name)
                if server is None:
                    continue
                for fmt, request_headers in measure.PAGE_REQUESTS.items():
                    static_name = f"{BIG_PROJECT}.{'html' if fmt == 'HTML' else 'json'}"
                    page = BIG_PROJECT if name in PROXIES else static_name
                    for connections in (1, 16, 128):
                        before = self.upstream_pages()
                        result = measure.wrk(
                            server.page_url(page),
                            connections,
                            self.wrk_seconds,
                            {"User-Agent": self.user_agent, **request_headers},
                            server.pid,
                        )
                        result["upstream_page_fetches"] = self.upstream_pages() - before
                        runs.setdefault((name, fmt, connections), []).append(result)
            log(
                f"  round {round_}: "
                + ", ".join(
                    f"{n} {f} c={c} {r[-1]['rps']:.0f} rps" for (n, f, c), r in runs.items() if c == 128
                )
            )
        self.results["pages"] = [
            {
                **combine(results, ("rps", "p50_ms", "p75_ms", "p90_ms", "p99_ms", "server_cpu_pct")),
                "server": name,
                "format": fmt,
                "connections": connections,
            }
            for (name, fmt, connections), results in runs.items()
        ]

    def upstream_pages(self) -> int:
        return sum(httpx.get(f"{self.upstream}/_bench/stats").json()["pages"].values())

    def section_files(self) -> None:
        size = self.manifest.file(self.manifest.big).size
        runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for round_ in range(self.rounds):
            for name in (*PROXIES, "nginx"):
                if name not in self.servers:
                    continue
                for clients in (1, 16):
                    result = measure.warm_downloads(
                        self.servers[name], self.urls[name]["big"], size, clients, self.file_seconds
                    )
                    runs.setdefault((name, clients), []).append(result)
            log(
                f"  round {round_}: "
                + ", ".join(f"{n} x{c} {r[-1]['aggregate_MBps']:.0f} MB/s" for (n, c), r in runs.items())
            )
        rows = []
        for (name, clients), results in runs.items():
            row = combine(results, ("aggregate_MBps", "per_client_MBps", "wall_s", "server_cpu_pct"))
            row.update(server=name, clients=clients, rss_start_mb=results[0]["rss_start_mb"])
            for key in ("rss_peak_mb", "rss_tree_peak_mb"):
                row[key] = max(r[key] for r in results)
            for key in ("downloads", "failed"):
                row[key] = sum(r[key] for r in results)
            rows.append(row)
        self.results["files"] = rows

    def section_cold(self) -> None:
        rows = []
        size = self.manifest.file(self.manifest.cold).size
        httpx.post(f"{self.upstream}/_bench/throttle", params={"mbps": self.upstream_mbps}).raise_for_status()
        try:
            for name in PROXIES:
                if name not in self.servers:
                    continue
                result = measure.cold_download(
                    self.servers[name],
                    self.urls[name]["cold"],
                    size,
                    self.cold_clients,
                    self.upstream,
                    self.manifest.cold,
                )
                result["server"] = name
                log(
                    f"  {name}: {result['upstream_downloads']} upstream downloads, {result['ok']} ok, "
                    f"first byte max {result['first_byte_s']['max']:.2f} s, "
                    f"last byte max {result['last_byte_s']['max']:.2f} s"
                )
                rows.append(result)
        finally:
            httpx.post(f"{self.upstream}/_bench/throttle", params={"mbps": 0}).raise_for_status()
        self.results["cold"] = rows

    def section_e2e(self) -> None:
        requirements = self.manifest.e2e_requirements
        sources: dict[str, list[str]] = {
            name: ["--index-url", s.simple_url] for name, s in self.servers.items() if name != BARE
        }
        sources["local wheels"] = ["--no-index", "--find-links", str(self.work / "wheels")]
        runs: list[dict[str, Any]] = []
        for rep in range(self.repeats + 1):  # round 0 warms the proxies' caches and is not counted
            for name, source in sources.items():
                for client in ("pip", "uv"):
                    result = measure.install(client, source, requirements, self.work / "install")
                    result.update(server=name, client=client, warmup=rep == 0)
                    if not result["ok"] or result["installed"] != len(requirements):
                        log(f"  {name} {client} FAILED: {result['output'][-600:]}")
                    runs.append(result)
            log(f"  round {rep} done")
        self.results["e2e"] = runs

    def section_sdist(self) -> None:
        requirements = self.manifest.sdist_requirements
        wheelfarm = self.servers.get("wheelfarm")
        runs: list[dict[str, Any]] = []
        info: dict[str, Any] = {}
        if wheelfarm is not None:
            info = self.build_ahead(wheelfarm, requirements)
        sources: dict[str, tuple[list[str], list[str]]] = {
            "client builds (sdists from upstream)": (["--index-url", f"{self.upstream}/simple/"], []),
        }
        if wheelfarm is not None and info.get("ok"):
            sources["wheelfarm (built ahead)"] = (
                ["--index-url", wheelfarm.simple_url],
                ["--only-binary", ":all:"],
            )
        for _ in range(self.repeats):
            for name, (source, extra) in sources.items():
                for client in ("pip", "uv"):
                    result = measure.install(client, source, requirements, self.work / "install", extra)
                    result.update(server=name, client=client, warmup=False)
                    log(f"  {name} {client}: {result['seconds']:.1f} s ok={result['ok']}")
                    if not result["ok"]:
                        log(result["output"][-800:])
                    runs.append(result)
        self.results["sdist"] = {"build_ahead": info, "runs": runs}

    def build_ahead(self, server: Server, requirements: list[str]) -> dict[str, Any]:
        code = "import sys; from builder.tags import target_from_user_agent as t; print(t(sys.argv[1]).id)"
        target = subprocess.run(
            [str(MAIN_BIN / "python"), "-c", code, self.user_agent],
            capture_output=True,
            text=True,
            check=True,
            cwd=launch.ROOT,
        ).stdout.strip()
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        started = time.monotonic()
        response = httpx.post(
            f"{server.origin}/admin/api/build-ahead",
            headers=auth,
            timeout=120,
            json={"target": target, "requirements": requirements},
        )
        info: dict[str, Any] = {"target": target, "status": response.status_code, "answer": response.json()}
        deadline = started + 900
        while time.monotonic() < deadline:
            builds = httpx.get(f"{server.origin}/admin/api/builds", timeout=30).json()
            finished = [b for b in builds["finished"] if b["project"] in requirements]
            if not builds["active"] and len(finished) >= len(requirements):
                break
            time.sleep(1)
        info["wall_s"] = time.monotonic() - started
        info["builds"] = [
            {k: b.get(k) for k in ("project", "state", "duration_seconds", "wheel", "error")}
            for b in finished
        ]
        info["ok"] = len(finished) == len(requirements) and all(b["state"] == "done" for b in finished)
        log(f"  build ahead: {info['builds']} in {info['wall_s']:.1f} s")
        if not info["ok"]:
            self.results["failures"]["wheelfarm sdist"] = f"build ahead did not build every sdist: {info}"[
                :2000
            ]
        return info

    # Profiles.

    def cold_again(self, server: Server) -> None:
        """The cold test once more on wheelfarm: purge the project's files, then 50 clients at once."""
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        purge = f"{server.origin}/admin/api/projects/{BIG_PROJECT}/purge"
        httpx.post(purge, headers=auth, json={"files": True}, timeout=60).raise_for_status()
        httpx.get(
            server.page_url(BIG_PROJECT), headers=self.headers("text/html"), timeout=60
        ).raise_for_status()
        httpx.post(f"{self.upstream}/_bench/throttle", params={"mbps": self.upstream_mbps}).raise_for_status()
        try:
            size = self.manifest.file(self.manifest.cold).size
            result = measure.cold_download(
                server,
                self.urls["wheelfarm"]["cold"],
                size,
                self.cold_clients,
                self.upstream,
                self.manifest.cold,
            )
            self.results["cold_profiled"] = {k: v for k, v in result.items() if k != "per_client"}
        finally:
            httpx.post(f"{self.upstream}/_bench/throttle", params={"mbps": 0}).raise_for_status()

    def profile_wheelfarm(self) -> None:
        server = self.servers.get("wheelfarm")
        if server is None:
            return
        py_spy = str(launch.BENCH_BIN / "py-spy")
        profiles: dict[str, Any] = {}
        loads: dict[str, Callable[[], object]] = {
            "pages_json_c128": lambda: measure.wrk(
                server.page_url(BIG_PROJECT), 128, 10, self.headers(measure.PIP_ACCEPT), server.pid
            ),
            "pages_html_c16": lambda: measure.wrk(
                server.page_url(BIG_PROJECT), 16, 10, self.headers("text/html"), server.pid
            ),
            "files_c16": lambda: measure.warm_downloads(
                server, self.urls["wheelfarm"]["big"], self.manifest.file(self.manifest.big).size, 16, 10
            ),
            "cold_c50": lambda: self.cold_again(server),
        }
        for label, load in loads.items():
            raw = self.work / f"profile-{label}.txt"
            spy = subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "-r",
                    "250",
                    "-d",
                    "12",
                    "-f",
                    "raw",
                    "-o",
                    str(raw),
                    "-p",
                    str(server.pid),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1)
            load()
            spy.wait(60)
            if raw.exists():
                profiles[label] = report.summarise_profile(raw.read_text())
                with (self.out / f"profile-{label}.collapsed.txt.gz").open("wb") as out:
                    out.write(gzip.compress(raw.read_bytes()))
            log(f"  profiled {label}")
        self.results["profiles"] = profiles


def combine(results: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """The median of each key over rounds (and its range), error counts summed, the rounds kept."""
    row: dict[str, Any] = {key: statistics.median(r[key] for r in results) for key in keys}
    row[f"{keys[0]}_range"] = [min(r[keys[0]] for r in results), max(r[keys[0]] for r in results)]
    for key in ("non_2xx", "socket_errors", "upstream_page_fetches", "requests"):
        if key in results[0]:
            row[key] = sum(r[key] for r in results)
    row["rounds"] = results
    return row


def find_link(page_url: str, page: str, filename: str) -> str:
    """The absolute URL of `filename` in an HTML simple page."""
    for href in re.findall(r'href="([^"]+)"', page):
        target = html.unescape(href).split("#", 1)[0]
        if target.rsplit("/", 1)[-1] == filename:
            return urljoin(page_url, target)
    raise LookupError(f"{filename} is not on {page_url}")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = next(
        line.split(":", 1)[1].strip()
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    os_name = next(
        (
            line.split("=", 1)[1].strip('"')
            for line in Path("/etc/os-release").read_text().splitlines()
            if line.startswith("PRETTY_NAME=")
        ),
        "",
    )

    def version(command: list[str]) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        except OSError:
            return "missing"
        return (
            (done.stdout + done.stderr).strip().splitlines()[0] if (done.stdout + done.stderr).strip() else ""
        )

    bench_python = str(launch.BENCH_BIN / "python")
    dist = "import importlib.metadata as m, sys; print(' '.join(f'{n} {m.version(n)}' for n in sys.argv[1:]))"
    commit = subprocess.run(
        ["git", "-C", str(launch.ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(launch.ROOT), "status", "--porcelain", "proxy", "builder"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": memory,
        "os": os_name,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wheelfarm": f"git {commit}{' + uncommitted changes' if dirty else ''}",
        "peers": version([bench_python, "-c", dist, "proxpi", "gunicorn", "devpi-server", "matplotlib"]),
        "clients": version([str(MAIN_BIN / "python"), "-c", dist, "pip", "uv"]),
        "nginx": version(["nginx", "-v"]),
        "wrk": version(["wrk", "-v"]),
        "curl": version(["curl", "--version"]),
        "loadavg_start": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small data, short runs: a smoke test")
    parser.add_argument("--only", default="", help=f"comma-separated sections of {','.join(SECTIONS)}")
    parser.add_argument("--profile", action="store_true", help="also record py-spy profiles of wheelfarm")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    args = parser.parse_args()
    if args.out is None:
        args.out = BENCH / ("results-quick" if args.quick else "results")
    for tool in ("wrk", "curl", "nginx"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed: apt-get install {tool}")
    bench = Bench(args)
    bench.profiling = args.profile
    bench.run()


if __name__ == "__main__":
    main()
