"""Several `wheelfarm serve` processes on one cache folder: one upstream download per file among them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from fake_upstream import FakeFile, FakeIndex, FakeUpstreamServer
from fakes import free_port
from serve import WHEELFARM, server_env, wheelfarm_serve

SIZE = 2 * 1024 * 1024


def serve_args(port: int, cache: Path, upstream: FakeUpstreamServer) -> list[str]:
    return [
        "--port", str(port), "--cache-dir", str(cache), "--upstream", upstream.simple_url,
        "--builder-enabled", "no", "--logging-format", "json",
    ]  # fmt: skip


def file_url(server_url: str, project: str, filename: str) -> str:
    page = httpx.get(f"{server_url}/simple/{project}/?format=json", timeout=30).json()
    (entry,) = [f for f in page["files"] if f["filename"] == filename]
    return str(httpx.URL(f"{server_url}/simple/{project}/").join(entry["url"]))


def test_processes_sharing_a_cache_download_each_file_once_and_survive_a_killed_downloader(
    fake_upstream: FakeUpstreamServer, fake_index: FakeIndex, tmp_path: Path
) -> None:
    """Ten clients, five through each of two processes, ask for the same uncached file at once: upstream
    sees one download and every client gets the right bytes. Then the process downloading another file is
    killed (-9) mid-download: the other process takes the download over and its clients still get it."""
    first = FakeFile(filename="shared-1.0.tar.gz", content=os.urandom(SIZE))
    second = FakeFile(filename="shared-2.0.tar.gz", content=os.urandom(SIZE))
    for dist in (first, second):
        fake_index.add_file("shared", dist)
        fake_index.slow_files[dist.filename] = 0.05  # 32 chunks of 64 KiB: about 1.6 s
    cache = tmp_path / "cache"
    ports = free_port(), free_port()
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(
                wheelfarm_serve(serve_args(port, cache, fake_upstream), port, tmp_path / f"s{n}")
            )
            for n, port in enumerate(ports)
        ]
        urls = [file_url(server.url, "shared", first.filename) for server in servers]
        with ThreadPoolExecutor(10) as pool:
            bodies = list(pool.map(lambda n: httpx.get(urls[n % 2], timeout=60).content, range(10)))
        assert all(body == first.content for body in bodies)
        assert fake_index.file_requests[first.filename] == 1
        stored = [
            line for server in servers for line in server.log_lines() if line.get("event") == "file_cached"
        ]
        taken = [
            line
            for s in servers
            for line in s.log_lines()
            if line.get("event") == "file_stored_by_another_process"
        ]
        assert len(stored) == 1
        assert len(taken) == 1

        # The downloader dies mid-download; the waiting process takes over once the kernel drops its lock.
        urls = [file_url(server.url, "shared", second.filename) for server in servers]
        with ThreadPoolExecutor(2) as pool:
            victim = pool.submit(lambda: httpx.get(urls[0], timeout=60))
            deadline = time.monotonic() + 30
            while fake_index.file_requests[second.filename] == 0:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            survivor = pool.submit(lambda: httpx.get(urls[1], timeout=60))
            os.kill(servers[0].process.pid, signal.SIGKILL)
            with contextlib.suppress(httpx.HTTPError):
                victim.result()
            assert survivor.result().content == second.content
        assert fake_index.file_requests[second.filename] == 2  # the killed download, then the survivor's
        # What the killed process was writing stays until a process starts on the folder: it removes the
        # uploads nobody holds (the survivor's, long since stored, is not among them).
        (left,) = (cache / "files" / "partial").iterdir()
        assert left.name.startswith(second.sha256)
        port = free_port()
        with wheelfarm_serve(serve_args(port, cache, fake_upstream), port, tmp_path / "s3"):
            assert list((cache / "files" / "partial").iterdir()) == []


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append(int(entry.name))
    return sorted(found)


def test_serve_processes_share_one_port_and_a_dead_one_is_started_again(
    fake_upstream: FakeUpstreamServer, tmp_path: Path
) -> None:
    port = free_port()
    args = [*serve_args(port, tmp_path / "cache", fake_upstream), "--processes", "2"]
    with wheelfarm_serve(args, port, tmp_path / "s") as server:
        deadline = time.monotonic() + 30
        while len(children := children_of(server.process.pid)) < 2:
            assert time.monotonic() < deadline, children
            time.sleep(0.1)
        for _ in range(20):  # a new connection each, through the one shared port
            assert httpx.get(server.url + "/simple/tinypure/?format=json", timeout=30).status_code == 200
        os.kill(children[0], signal.SIGKILL)
        while len(again := children_of(server.process.pid)) < 2 or children[0] in again:
            assert time.monotonic() < deadline + 30, again
            time.sleep(0.1)
        assert httpx.get(server.url + "/healthz", timeout=30).status_code == 200
        died = [line for line in server.log_lines() if line.get("event") == "serving_process_died"]
        assert [line["pid"] for line in died] == [children[0]]
    assert server.process.returncode == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in again)


def test_several_processes_with_a_local_builder_and_no_cluster_is_refused(tmp_path: Path) -> None:
    run = subprocess.run(
        [str(WHEELFARM), "serve", "--processes", "2", "--cache-dir", str(tmp_path / "c")],
        env=server_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2
    assert "needs [cluster] database" in run.stderr


def test_hosts_sharing_only_a_files_folder_download_each_file_once(
    fake_upstream: FakeUpstreamServer, fake_index: FakeIndex, tmp_path: Path
) -> None:
    """Two hosts of a cluster: a cache folder each (their own pages), one shared folder for files
    (``[cache] files_dir`` on a network mount). Twelve clients spread over both ask for one uncached file
    at once: upstream sees one download, every client gets the right bytes."""
    dist = FakeFile(filename="across-1.0.tar.gz", content=os.urandom(SIZE))
    fake_index.add_file("across", dist)
    fake_index.slow_files[dist.filename] = 0.03
    shared = tmp_path / "shared-files"
    ports = free_port(), free_port()
    with contextlib.ExitStack() as stack:
        hosts = [
            stack.enter_context(
                wheelfarm_serve(
                    [
                        *serve_args(port, tmp_path / f"host{n}", fake_upstream),
                        "--cache-files-dir",
                        str(shared),
                    ],
                    port,
                    tmp_path / f"h{n}",
                )
            )
            for n, port in enumerate(ports)
        ]
        urls = [file_url(host.url, "across", dist.filename) for host in hosts]
        with ThreadPoolExecutor(12) as pool:
            bodies = list(pool.map(lambda n: httpx.get(urls[n % 2], timeout=60).content, range(12)))
    assert all(body == dist.content for body in bodies)
    assert fake_index.file_requests[dist.filename] == 1
    assert not (tmp_path / "host0" / "files").exists()
    assert not (tmp_path / "host1" / "files").exists()
