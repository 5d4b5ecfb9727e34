"""Start and stop the servers under test, all on 127.0.0.1, each in its own process group.

wheelfarm, proxpi (gunicorn, 8 threads), devpi-server (a mirror index pointed at the fake upstream),
nginx (static files: the physical limit) and, for pages only, a bare aiohttp server (the framework's
floor). `ProcessTree` samples a server's resident memory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import httpx

BENCH: Final = Path(__file__).resolve().parent
ROOT: Final = BENCH.parent
MAIN_BIN: Final = ROOT / ".venv" / "bin"
BENCH_BIN: Final = BENCH / ".venv" / "bin"
ADMIN_TOKEN: Final = "bench-token"
PAGE_TTL: Final = 7200  # every proxy keeps pages fresh for the whole run: warm means warm


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running server: where its simple index and project pages are, and its process."""

    name: str
    process: subprocess.Popen[bytes]
    origin: str
    simple_url: str  # what pip/uv get as --index-url
    log: Path
    page_url: Callable[[str], str] = field(repr=False)
    notes: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(15)


def _spawn(command: list[str], log: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def start_wheelfarm(upstream_simple: str, work: Path) -> Server:
    port = free_port()
    log = work / "wheelfarm.log"
    command = [
        str(MAIN_BIN / "wheelfarm"),
        "serve",
        "--port",
        str(port),
        "--cache-dir",
        str(work / "cache"),
        "--upstream",
        upstream_simple,
        "--logging-level",
        "warning",
        "--upstream-read-timeout",
        "120",
        "--cache-page-ttl",
        str(PAGE_TTL),
        "--admin-enabled",
        "true",
        "--admin-token",
        ADMIN_TOKEN,
    ]
    process = _spawn(command, log)
    origin = f"http://127.0.0.1:{port}"
    server = Server("wheelfarm", process, origin, f"{origin}/simple/", log, lambda p: f"{origin}/simple/{p}/")
    _checked_start(server, f"{origin}/healthz")
    return server


def start_proxpi(upstream_simple: str, work: Path) -> Server:
    port = free_port()
    log = work / "proxpi.log"
    env = {
        "PROXPI_INDEX_URL": upstream_simple,
        "PROXPI_CACHE_DIR": str(work / "cache"),
        "PROXPI_INDEX_TTL": str(PAGE_TTL),
        "PROXPI_CACHE_SIZE": str(20 << 30),
        "PROXPI_LOGGING_LEVEL": "WARNING",
        "PROXPI_READ_TIMEOUT": "120",
    }
    command = [
        str(BENCH_BIN / "gunicorn"),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        "--threads",
        "8",
        "--timeout",
        "300",
        "proxpi.server:app",
    ]
    process = _spawn(command, log, env)
    origin = f"http://127.0.0.1:{port}"
    server = Server("proxpi", process, origin, f"{origin}/index/", log, lambda p: f"{origin}/index/{p}/")
    server.notes.append(
        "gunicorn gthread, 1 worker, 8 threads; PROXPI_DOWNLOAD_TIMEOUT left at its default (0.9 s)"
    )
    _checked_start(server, f"{origin}/health")
    return server


def start_devpi(upstream_simple: str, work: Path) -> Server:
    port = free_port()
    log = work / "devpi.log"
    serverdir, clientdir = work / "server", work / "client"
    init = subprocess.run(
        [str(BENCH_BIN / "devpi-init"), "--serverdir", str(serverdir), "--no-root-pypi"],
        capture_output=True,
        text=True,
        check=False,
    )
    if init.returncode != 0:
        raise RuntimeError(f"devpi-init failed: {init.stdout}{init.stderr}")
    command = [
        str(BENCH_BIN / "devpi-server"),
        "--serverdir",
        str(serverdir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    process = _spawn(command, log)
    origin = f"http://127.0.0.1:{port}"
    index = f"{origin}/root/pypi/+simple/"
    server = Server("devpi", process, origin, index, log, lambda p: f"{origin}/root/pypi/+simple/{p}/")
    _checked_start(server, f"{origin}/+api")
    # root/pypi as a mirror of the fake upstream, made with devpi-client (root's password is empty).
    devpi = [str(BENCH_BIN / "devpi"), "--clientdir", str(clientdir)]
    for args in (
        ["use", origin],
        ["login", "root", "--password", ""],
        [
            "index",
            "-c",
            "root/pypi",
            "type=mirror",
            f"mirror_url={upstream_simple}",
            f"mirror_cache_expiry={PAGE_TTL}",
        ],
    ):
        done = subprocess.run([*devpi, *args], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            server.stop()
            raise RuntimeError(f"devpi {' '.join(args)} failed: {done.stdout}{done.stderr}")
    server.notes.append(
        f"devpi-server defaults (waitress); root/pypi: type=mirror, mirror_cache_expiry={PAGE_TTL}"
    )
    return server


NGINX_CONF: Final = """\
{user}worker_processes auto;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    include /etc/nginx/mime.types;
    types {{ application/vnd.pypi.simple.v1+json json; text/html html; }}
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    gzip_static on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {work}/tmp;
    proxy_temp_path {work}/tmp;
    fastcgi_temp_path {work}/tmp;
    uwsgi_temp_path {work}/tmp;
    scgi_temp_path {work}/tmp;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ index index.html; }}
    }}
}}
"""


def start_nginx(root: Path, work: Path) -> Server:
    """nginx serving `root` as static files (pages saved from wheelfarm, the wheels, a static index)."""
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    (work / "tmp").mkdir(exist_ok=True)
    conf = work / "nginx.conf"
    user = "user root root;\n" if os.geteuid() == 0 else ""  # workers must read files under the work tree
    conf.write_text(NGINX_CONF.format(user=user, work=work, port=port, root=root))
    process = _spawn(["nginx", "-c", str(conf), "-p", str(work)], work / "nginx.out")
    origin = f"http://127.0.0.1:{port}"
    server = Server(
        "nginx", process, origin, f"{origin}/simple/", work / "error.log", lambda p: f"{origin}/pages/{p}"
    )
    server.notes.append(
        "nginx static files, sendfile on, gzip_static on (wheelfarm's gzip bytes), worker_processes auto, "
        "access_log off"
    )
    _checked_start(server, f"{origin}/")
    return server


def start_bare_aiohttp(pages: Path, work: Path) -> Server:
    """bench/bare_aiohttp.py: the same page bytes from memory through aiohttp with no other work."""
    port = free_port()
    command = [
        str(MAIN_BIN / "python"),
        str(BENCH / "bare_aiohttp.py"),
        "--port",
        str(port),
        "--pages",
        str(pages),
    ]
    process = _spawn(command, work / "bare-aiohttp.log")
    origin = f"http://127.0.0.1:{port}"
    server = Server(
        "bare aiohttp",
        process,
        origin,
        f"{origin}/simple/",
        work / "bare-aiohttp.log",
        lambda p: f"{origin}/pages/{p}",
    )
    server.notes.append(
        "wheelfarm's page bytes from memory, one handler, no middleware or access log "
        "(the floor of any aiohttp server here)"
    )
    _checked_start(server, f"{origin}/")
    return server


def _checked_start(server: Server, url: str) -> None:
    try:
        wait_ready(url, server.process)
    except RuntimeError as exc:
        server.stop()
        tail = server.log.read_text(errors="replace")[-2000:] if server.log.exists() else ""
        raise RuntimeError(f"{server.name}: {exc}\n{tail}") from None


# Memory.


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def tree_pids(pid: int) -> list[int]:
    tree, found, todo = _children(), [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(tree.get(current, []))
    return found


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds used so far by `pid` and every process under it."""
    total = 0.0
    for each in tree_pids(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class ProcessTree:
    """Samples the RSS of a server's main process and of its whole process tree every `interval` s."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self.pids = tree_pids(pid)
        self.peak_main = self.peak_tree = 0.0
        self.start_main = rss_mb(pid)
        self.start_tree = sum(rss_mb(p) for p in self.pids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rounds = 0
        while not self._stop.wait(self.interval):
            rounds += 1
            if rounds % 20 == 0:
                self.pids = tree_pids(self.pid)
            values = [rss_mb(p) for p in self.pids]
            self.peak_main = max(self.peak_main, values[0] if values else 0.0)
            self.peak_tree = max(self.peak_tree, sum(values))

    @contextlib.contextmanager
    def sampling(self) -> Iterator[ProcessTree]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
