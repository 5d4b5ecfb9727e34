"""A real PostgreSQL for the cluster tests: initdb into a temporary folder, the server on a loopback port.

Debian's `postgresql` package provides the binaries (`make test` installs it). PostgreSQL refuses to run as
root, so as root the server runs as the package's `postgres` user; as anyone else, as that user. Password
authentication (scram-sha-256) even on loopback, so the tests see the credentials flow as a deployment
would. `restart()` stops and starts the same cluster (clients lose their connections).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PASSWORD = "cluster-test-password"
USER = "wheelfarm"


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    def __init__(self) -> None:
        binaries = postgres_bin()
        if binaries is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql; `make test` does)")
        self.bin = binaries
        # Its own folder, not pytest's tmp_path: that one is private to us, and the server runs as `postgres`.
        self.folder = Path(tempfile.mkdtemp(prefix="wheelfarm-pg-"))
        self.data = self.folder / "data"
        self.sockets = self.folder / "sockets"
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._as_user = "postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/wheelfarm"

    def _own(self, path: Path) -> None:
        if self._as_user:
            entry = pwd.getpwnam(self._as_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def init(self) -> None:
        self.folder.chmod(0o755)
        for path in (self.data, self.sockets):
            path.mkdir()
            self._own(path)
        self.data.chmod(0o700)
        password_file = self.folder / "pw"
        password_file.write_text(PASSWORD + "\n")
        self._own(password_file)
        subprocess.run(
            [
                str(self.bin / "initdb"), "-D", str(self.data), "-U", USER, "--pwfile", str(password_file),
                "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
            ],
            check=True,
            capture_output=True,
            cwd=self.folder,
            # As the server's user directly (no runuser in between, so signals reach the server itself).
            user=self._as_user, group=self._as_user, extra_groups=[] if self._as_user else None,
        )  # fmt: skip
        password_file.unlink()
        self.start()
        subprocess.run(
            [str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "wheelfarm"],
            check=True,
            capture_output=True,
            env={**os.environ, "PGPASSWORD": PASSWORD},
        )

    def start(self) -> None:
        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 - the server keeps writing to it
        self._own(self.folder / "server.log")
        self.process = subprocess.Popen(
            [
                str(self.bin / "postgres"), "-D", str(self.data), "-h", "127.0.0.1", "-p", str(self.port),
                "-k", str(self.sockets), "-c", "fsync=off", "-c", "full_page_writes=off",
                "-c", "max_connections=200",
            ],
            stdout=log,
            stderr=log,
            cwd=self.folder,
            # As the server's user directly (no runuser in between, so signals reach the server itself).
            user=self._as_user, group=self._as_user, extra_groups=[] if self._as_user else None,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"], check=False
            )
            if ready.returncode == 0:
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError("PostgreSQL did not start: " + (self.folder / "server.log").read_text()[-2000:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(
                signal.SIGINT
            )  # "fast" shutdown: SIGTERM's "smart" one waits for clients
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
