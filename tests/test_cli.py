"""The real `wheelfarm serve` command as a subprocess: start-up, settings, a pip install, the request log."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Final

import httpx
import pytest
from aiohttp import web
from clientenv import Client
from clients import install
from fake_upstream import FakeIndex, FakeUpstreamServer
from fakes import free_port
from serve import WHEELFARM, server_env, wheelfarm_serve
from servers import ServerThread

from builder.tags import target_from_user_agent

REQUEST_LOG_KEYS: Final = {"method", "path", "status", "bytes", "duration_ms", "cache", "request_id"}


def file_path(index: FakeIndex, filename: str, suffix: str = "") -> str:
    project, dist = index.find(filename) or pytest.fail(f"{filename} is not on the fake index")
    return f"/files/{project}/{dist.sha256}/{filename}{suffix}"


def test_serve_installs_and_logs_one_json_line_per_request(
    fake_upstream: FakeUpstreamServer, fake_index: FakeIndex, tmp_path: Path
) -> None:
    port = free_port()
    args = [
        "--port",
        str(port),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--upstream",
        fake_upstream.simple_url,
        "--logging-format",
        "json",
    ]
    wheel = "tinypure-2.0-py3-none-any.whl"
    with wheelfarm_serve(args, port, tmp_path / "server") as server:
        install(Client.PIP, server.simple_url, ["tinydep"], tmp_path / "pip").check()
        again = httpx.get(
            server.url + file_path(fake_index, wheel), headers={"X-Request-ID": "cli-test-again"}
        )
        assert again.status_code == 200
        assert again.headers["X-Request-ID"] == "cli-test-again"
        assert server.stop(signal.SIGINT) == 0

    lines = server.request_lines()
    for line in lines:
        assert line.keys() >= REQUEST_LOG_KEYS, line
        assert isinstance(line["bytes"], int)
        assert isinstance(line["duration_ms"], int | float)
        assert line["duration_ms"] >= 0
    # One line per request: every request id appears once.
    ids = Counter(line["request_id"] for line in lines)
    assert all(count == 1 for count in ids.values()), ids
    # pip asked for two pages, two PEP 658 metadata files and two wheels, each once; all logged as misses.
    by_pip = [line for line in lines if line.get("user_agent", "").startswith("pip/")]
    expected = [
        "/simple/tinydep/",
        "/simple/tinypure/",
        file_path(fake_index, "tinydep-1.0-py2.py3-none-any.whl", ".metadata"),
        file_path(fake_index, wheel, ".metadata"),
        file_path(fake_index, "tinydep-1.0-py2.py3-none-any.whl"),
        file_path(fake_index, wheel),
    ]
    assert sorted(line["path"] for line in by_pip) == sorted(expected)
    for line in by_pip:
        assert (line["method"], line["status"], line["cache"]) == ("GET", 200, "miss"), line
    first, later = (line for line in lines if line["path"] == file_path(fake_index, wheel))
    assert first["bytes"] == len(fake_index.file(wheel).content)  # streamed by sendfile: the body, counted
    assert (later["request_id"], later["cache"], later["status"]) == ("cli-test-again", "hit", 200)
    assert "Traceback" not in server.stderr()


@pytest.mark.parametrize(
    ("args", "env", "setting"),
    [
        (["--port", "notanumber"], {}, "port"),
        ([], {"WHEELFARM_SERVER_PORT": "notanumber"}, "WHEELFARM_SERVER_PORT"),
    ],
    ids=["flag", "environment"],
)
def test_bad_port_exits_2_naming_the_setting(
    tmp_path: Path, args: list[str], env: dict[str, str], setting: str
) -> None:
    completed = subprocess.run(
        [str(WHEELFARM), "serve", "--cache-dir", str(tmp_path / "cache"), *args],
        env=server_env(tmp_path / "home", env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 2
    # One line, no traceback, e.g. "wheelfarm: flag --server-port: 'notanumber' is not a valid integer".
    assert completed.stderr.startswith("wheelfarm: ")
    assert completed.stderr.count("\n") == 1
    assert setting in completed.stderr
    assert "'notanumber' is not a valid integer" in completed.stderr


@pytest.mark.parametrize("problem", ["port in use", "cache is a file", "mistyped variable"])
def test_start_up_failures_are_one_line_and_a_non_zero_exit(tmp_path: Path, problem: str) -> None:
    port = free_port()
    cache, env = tmp_path / "cache", {}
    if problem == "cache is a file":
        cache.write_text("not a folder")
        cache = cache / "inside"
    if problem == "mistyped variable":
        env = {"WHEELFARM_CACHE_PAGE_TLL": "5"}
    with socket.socket() as taken:
        if problem == "port in use":
            taken.bind(("127.0.0.1", port))
            taken.listen()
        completed = subprocess.run(
            [
                str(WHEELFARM),
                "serve",
                "--port",
                str(port),
                "--cache-dir",
                str(cache),
                "--builder-enabled",
                "no",
            ],
            env=server_env(tmp_path / "home", env),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert completed.returncode != 0
    assert "Traceback" not in completed.stderr
    problems = [line for line in completed.stderr.splitlines() if line.startswith("wheelfarm: ")]
    expected = {
        "port in use": f"wheelfarm: cannot start: the address is already in use (127.0.0.1:{port})",
        "cache is a file": f"wheelfarm: cannot start: Not a directory: {cache}",
        "mistyped variable": (
            "wheelfarm: unknown environment variable WHEELFARM_CACHE_PAGE_TLL; "
            "did you mean WHEELFARM_CACHE_PAGE_TTL?"
        ),
    }[problem]
    assert problems == [expected], completed.stderr
    assert [line for line in completed.stderr.splitlines() if not line.startswith(("wheelfarm: ", "{"))] == []


def test_port_from_the_environment(fake_upstream: FakeUpstreamServer, tmp_path: Path) -> None:
    port = free_port()
    env = {"WHEELFARM_SERVER_PORT": str(port)}
    args = ["--cache-dir", str(tmp_path / "cache"), "--upstream", fake_upstream.simple_url]
    with wheelfarm_serve(args, port, tmp_path / "server", env) as server:
        page = httpx.get(
            server.simple_url + "tinypure/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
        )
        assert page.status_code == 200
        assert page.json()["name"] == "tinypure"
        assert server.stop(signal.SIGTERM) == 0
    # stderr is not a terminal, so the default format ("auto") is JSON too.
    (starting,) = [line for line in server.log_lines() if line["event"] == "starting"]
    assert starting["port"] == port


def test_wheelfarm_target_prints_what_pip_tells_the_proxy(tmp_path: Path) -> None:
    """`wheelfarm target` names this interpreter's target exactly as the proxy reads it from pip."""
    agents: list[str] = []

    async def capture(request: web.Request) -> web.Response:
        agents.append(request.headers.get("User-Agent", ""))
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/simple/{project}/", capture)
    with ServerThread(app) as index:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(tmp_path), "--index-url",
             f"{index.url}/simple/", "no-such-project"],
            env=server_env(tmp_path / "home"), capture_output=True, timeout=60, check=False,
        )  # fmt: skip
    printed = subprocess.run(
        [str(WHEELFARM), "target", "--url", "http://wheelfarm.example:8080"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.splitlines()  # fmt: skip

    assert agents, "pip asked the index for nothing"
    target = target_from_user_agent(agents[0])
    assert target is not None
    assert printed[0] == target.id
    assert printed[2] == f"poetry, pdm and other clients: http://wheelfarm.example:8080/t/{target.id}/simple/"
