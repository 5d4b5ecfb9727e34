"""The operator's command line, `wheelfarm status | cache ... | build ...`, run as a subprocess."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
from buildkit import ADMIN_TOKEN, TARGET, absolute, files, page, pending_links
from dists import in_tree_backend_sdist, make_sdist
from fake_upstream import FakeFile, FakeIndex
from fakes import FakeClock, ProxyServer, free_port

WHEELFARM: Final = Path(sys.executable).parent / "wheelfarm"
TOKEN: Final = ADMIN_TOKEN
BUILT: Final = "tinypure-3.0-py2.py3-none-any.whl"

NOTHING_TO_BUILD = "no sdist matches: no matching release lacks a wheel for the target"


@dataclass(frozen=True)
class Ran:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """No WHEELFARM_* (or anything else) from the machine running the tests."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", **(extra or {})}


def admin_args(proxy: ProxyServer, token: str | None = TOKEN) -> list[str]:
    return ["--url", f"{proxy.url}/admin/", *(["--token", token] if token is not None else [])]


def wheelfarm(*args: str, env: Mapping[str, str] | None = None, stdin: str | None = None) -> Ran:
    completed = subprocess.run(
        [str(WHEELFARM), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(env),
        check=False,
    )
    return Ran(completed.returncode, completed.stdout, completed.stderr)


def on_terminal(*args: str, deadline: float = 120.0) -> tuple[int, str]:
    """Run wheelfarm with a pseudo-terminal as stdout and stderr; its exit code and everything it wrote."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [str(WHEELFARM), *args], stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=clean_env()
    )
    os.close(follower)
    chunks: list[bytes] = []
    end = time.monotonic() + deadline
    try:
        while time.monotonic() < end:
            if not select.select([leader], [], [], 1.0)[0]:
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        return process.wait(timeout=10), b"".join(chunks).decode()
    finally:
        os.close(leader)
        if process.poll() is None:
            process.kill()


def admin_json(proxy: ProxyServer, path: str) -> dict[str, Any]:
    response = httpx.get(f"{proxy.url}/admin/api/{path}", timeout=30)
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def download(proxy: ProxyServer, project: str, filename: str) -> None:
    entry = files(page(proxy, project, scope=""))[filename]
    response = httpx.get(absolute(proxy, project, entry["url"], scope=""), timeout=60)
    assert response.status_code == 200


def build_ahead(proxy: ProxyServer, *requirements: str, extra: tuple[str, ...] = ()) -> Ran:
    return wheelfarm("build", "ahead", *requirements, "--target", TARGET, *extra, *admin_args(proxy))


def test_status_and_cache_summary(admin_proxy: ProxyServer) -> None:
    download(admin_proxy, "tinypure", "tinypure-1.0.tar.gz")
    download(admin_proxy, "tinypure", "tinypure-1.0.tar.gz")
    status = wheelfarm("status", *admin_args(admin_proxy, token=None))
    assert status.code == 0, status.output
    lines = {line.split()[0]: line for line in status.stdout.splitlines()[1:]}
    assert re.fullmatch(r"pages +1 \(\d+(\.\d)? K?i?B\)", lines["pages"])
    assert re.fullmatch(r"files +1 \(\d+(\.\d)? K?i?B, 0 evicted\)", lines["files"])
    assert re.fullmatch(r"hit +ratio +\d+\.\d%", lines["hit"])
    assert re.fullmatch(r"builds +0 queued, 0 running, 0 done, 0 failed, 0 orphaned", lines["builds"])
    assert status.stdout.startswith(f"wheelfarm admin {admin_proxy.url}/admin/ (upstream http://")
    summary = wheelfarm("cache", "summary", *admin_args(admin_proxy))
    assert summary.code == 0
    assert re.search(r"^hit ratio +\d+\.\d% \(hit \d+, miss \d+\)$", summary.stdout, re.MULTILINE)
    raw = json.loads(wheelfarm("status", "--json", *admin_args(admin_proxy)).stdout)
    assert raw["files"]["count"] == 1
    assert raw == admin_json(admin_proxy, "summary") | {"cache": raw["cache"]}  # counters move as we read


def test_build_ahead_waits_then_the_page_lists_the_wheel(admin_proxy: ProxyServer) -> None:
    ran = build_ahead(admin_proxy, "tinypure==3.0")
    assert ran.code == 0, ran.output
    assert "\x1b" not in ran.stdout  # not a terminal: plain appended lines
    assert "\r" not in ran.stdout
    lines = ran.stdout.splitlines()
    assert re.fullmatch(rf"done +\d+\.\ds  tinypure==3\.0  -> {re.escape(BUILT)}", lines[-2])
    assert re.fullmatch(rf"1 built, 0 failed, 0 skipped for {TARGET} in \d+\.\ds", lines[-1])
    assert BUILT in files(page(admin_proxy, "tinypure"))
    listed = wheelfarm("build", "list", *admin_args(admin_proxy))
    assert re.search(rf"done .* tinypure 3\.0 +{TARGET} +[0-9a-f]{{64}} +{re.escape(BUILT)}", listed.stdout)
    shown = wheelfarm("cache", "show", "TinyPure", *admin_args(admin_proxy))
    assert shown.code == 0
    assert f"builds for {TARGET}" in shown.stdout
    assert re.search(r"cached +\d+(\.\d)? K?i?B +tinypure-3\.0\.tar\.gz", shown.stdout)
    # Built already: a second run says so at once.
    again = build_ahead(admin_proxy, "tinypure==3.0", extra=("--json",))
    assert again.code == 0
    (entry,) = json.loads(again.stdout)["builds"]
    assert (entry["state"], entry["build"]["wheel"]) == ("done", BUILT)
    # Deleting the build brings the pending link back.
    deleted = wheelfarm("build", "delete", entry["key"]["sdist_sha256"], TARGET, *admin_args(admin_proxy))
    assert deleted.code == 0, deleted.output
    assert BUILT not in files(page(admin_proxy, "tinypure"))
    assert len(pending_links(page(admin_proxy, "tinypure"))) == 1


def test_failed_build_exits_1_with_the_reason_and_log_then_retry(admin_proxy: ProxyServer) -> None:
    ran = build_ahead(admin_proxy, "brokenpkg==1.0")
    assert ran.code == 1, ran.output
    assert "FAILED brokenpkg==1.0 (brokenpkg-1.0.tar.gz) in build:" in ran.stdout
    assert "    | RuntimeError: no compiler for you\n" in ran.stdout  # from the log
    assert "0 built, 1 failed, 0 skipped" in ran.stdout
    log_url = re.search(r"^  log: +(\S+)$", ran.stdout, re.MULTILINE)
    assert log_url is not None
    assert "RuntimeError: no compiler for you" in httpx.get(log_url[1]).text
    assert not pending_links(page(admin_proxy, "brokenpkg"))  # the failure is remembered
    retry = re.search(r"^  retry: wheelfarm (build retry [0-9a-f]{64} \S+)$", ran.stdout, re.MULTILINE)
    assert retry is not None
    retried = wheelfarm(*retry[1].split(), *admin_args(admin_proxy))
    assert retried.code == 0, retried.output
    assert "forgot the failed build of brokenpkg-1.0.tar.gz" in retried.stdout
    assert len(pending_links(page(admin_proxy, "brokenpkg"))) == 1
    # Only a failed build can be retried; an unknown one is the server's 404.
    missing = wheelfarm(*retry[1].split(), *admin_args(admin_proxy))
    assert missing.code == 2
    assert "HTTP 404" in missing.stderr
    assert "no finished build of" in missing.stderr


def test_hostile_build_logs_cannot_drive_the_terminal(
    admin_proxy: ProxyServer, build_index: FakeIndex, tmp_path: Path
) -> None:
    body = '    print("error: \\x1b]0;pwned\\x07\\x1b[2J\\rforged")\n    raise RuntimeError("\\x1b[31mred")'
    build_index.add_file(
        "evilpkg", FakeFile.from_path(in_tree_backend_sdist(tmp_path, "evilpkg", "1.0", body))
    )
    code, output = on_terminal("build", "ahead", "evilpkg==1.0", "--target", TARGET, *admin_args(admin_proxy))
    assert code == 1, output
    assert "| error: ^[]0;pwned^G^[[2J" in output  # lines from the log are shown...
    assert "| RuntimeError: ^[[31mred" in output
    assert "\x1b]" not in output  # ...without its escape sequences
    assert "\x1b[2J" not in output
    assert "\x1b[31m" not in output


def test_progress_is_redrawn_in_place_on_a_terminal(admin_proxy: ProxyServer) -> None:
    code, output = on_terminal(
        "build", "ahead", "slowpkg==1.0", "--target", TARGET, "--interval", "0.2", *admin_args(admin_proxy)
    )
    assert code == 0, output
    assert output.count("\x1b[2K") > 5  # redrawn at each poll while the 3 s build runs
    assert re.search(r"\x1b\[\d+A", output)  # cursor up over the previous drawing
    assert re.search(r"running +\d+\.\ds  slowpkg==1\.0  slowpkg-1\.0\.tar\.gz", output)
    assert "building for " + TARGET in output
    assert "1 built, 0 failed, 0 skipped" in output


def test_no_wait_starts_and_returns(admin_proxy: ProxyServer) -> None:
    started = build_ahead(
        admin_proxy, "slowpkg==1.0", "tinypure==9.9", "nosuchproject==1.0", extra=("--no-wait",)
    )
    assert started.code == 0, started.output
    assert re.search(r"^started +slowpkg==1\.0 +slowpkg-1\.0\.tar\.gz$", started.stdout, re.MULTILINE)
    assert re.search(r"^no sdist matches: .* +tinypure==9\.9$", started.stdout, re.MULTILINE)
    assert re.search(r"^no such project upstream +nosuchproject==1\.0$", started.stdout, re.MULTILINE)
    active = admin_json(admin_proxy, "builds")["active"]
    assert [b["project"] for b in active] == ["slowpkg"]
    listed = wheelfarm("build", "list", *admin_args(admin_proxy))
    assert re.search(rf"^  (queued|running) +\d+\.\ds +slowpkg 1\.0 +{TARGET}", listed.stdout, re.MULTILINE)


def test_waiting_gives_up_after_the_timeout(admin_proxy: ProxyServer) -> None:
    ran = build_ahead(admin_proxy, "slowpkg==1.0", extra=("--timeout", "0.5", "--interval", "0.2"))
    assert ran.code == 1, ran.output
    assert ran.stdout.endswith("gave up waiting: 1 builds still queued or running on the proxy\n")
    assert [b["project"] for b in admin_json(admin_proxy, "builds")["active"]] == ["slowpkg"]


def test_requirements_files_as_pip_reads_them(admin_proxy: ProxyServer, tmp_path: Path) -> None:
    (tmp_path / "base.txt").write_text("tinypure==3.0  # the pure one\n")
    lock = tmp_path / "requirements.lock"
    lock.write_text(
        "# pip-compile --generate-hashes\n"
        "--index-url https://example.org/simple/\n"
        "-r base.txt\n"
        "slowpkg==1.0 \\\n"
        f"    --hash=sha256:{'a' * 64} \\\n"
        f"    --hash=sha256:{'b' * 64}\n"
        "tinypure==9.9 ; python_version >= '3'\n"
    )
    ran = build_ahead(admin_proxy, "-r", str(lock), extra=("--no-wait", "--json"))
    assert ran.code == 0, ran.output
    states = {b["requirement"]: b["state"] for b in json.loads(ran.stdout)["builds"]}
    assert states == {
        "tinypure==3.0": "started",
        "slowpkg==1.0": "started",
        'tinypure==9.9; python_version >= "3"': NOTHING_TO_BUILD,
    }
    from_stdin = wheelfarm(
        "build",
        "ahead",
        "-r",
        "-",
        "--target",
        TARGET,
        "--no-wait",
        *admin_args(admin_proxy),
        stdin="tinypure==3.0",
    )
    assert from_stdin.code == 0, from_stdin.output
    nothing = build_ahead(admin_proxy, "-r", str(tmp_path / "missing.txt"))
    assert nothing.code == 2
    assert "cannot read requirements file" in nothing.stderr


def test_cache_purge_with_files(admin_proxy: ProxyServer) -> None:
    download(admin_proxy, "tinypure", "tinypure-1.0.tar.gz")
    without_token = wheelfarm("cache", "purge", "tinypure", "--files", *admin_args(admin_proxy, token=None))
    assert without_token.code == 2
    assert "HTTP 401" in without_token.stderr
    assert "the admin token is missing" in without_token.stderr
    purged = wheelfarm("cache", "purge", "tinypure", "--files", *admin_args(admin_proxy))
    assert purged.code == 0, purged.output
    assert purged.stdout == "purged tinypure: page forgotten, 1 cached files and 0 builds removed\n"
    summary = admin_json(admin_proxy, "summary")
    assert (summary["pages"]["count"], summary["files"]["count"]) == (0, 0)


def test_cache_evict_unused(admin_proxy: ProxyServer, clock: FakeClock) -> None:
    download(admin_proxy, "tinypure", "tinypure-1.0.tar.gz")
    clock.advance(2 * 86400)
    kept = wheelfarm("cache", "evict", "--unused-for", "3", *admin_args(admin_proxy))
    assert kept.stdout == "evicted 0 files unused for 3 days\n"
    evicted = wheelfarm("cache", "evict", "--unused-for", "0", *admin_args(admin_proxy))
    assert evicted.code == 0, evicted.output
    assert evicted.stdout == "evicted 1 files unused for 0 days\n"
    assert admin_json(admin_proxy, "summary")["files"]["count"] == 0
    negative = wheelfarm("cache", "evict", "--unused-for", "-1", *admin_args(admin_proxy))
    assert negative.code == 2
    assert "must be a number, 0 or more" in negative.stderr


def test_url_and_token_from_the_environment(admin_proxy: ProxyServer, clock: FakeClock) -> None:
    download(admin_proxy, "tinypure", "tinypure-1.0.tar.gz")
    clock.advance(1)
    env = {"WHEELFARM_ADMIN_URL": f"{admin_proxy.url}/admin", "WHEELFARM_ADMIN_TOKEN": TOKEN}
    ran = wheelfarm("cache", "evict", "--unused-for", "0", env=env)
    assert ran.code == 0, ran.output
    assert ran.stdout == "evicted 1 files unused for 0 days\n"


def test_wrong_token_is_exit_2_and_changes_nothing(admin_proxy: ProxyServer) -> None:
    download(admin_proxy, "tinypure", "tinypure-1.0.tar.gz")
    ran = wheelfarm("cache", "purge", "tinypure", "--files", *admin_args(admin_proxy, token="wrong"))
    assert ran.code == 2
    assert "HTTP 401" in ran.stderr
    assert "a valid 'Authorization: Bearer <token>' header is needed" in ran.stderr
    assert "token was refused" in ran.stderr
    assert ran.stdout == ""
    assert admin_json(admin_proxy, "summary")["files"]["count"] == 1


def test_bad_requirement_and_target_show_the_servers_400(admin_proxy: ProxyServer) -> None:
    bad = build_ahead(admin_proxy, "tiny pure ===")
    assert bad.code == 2
    assert "HTTP 400" in bad.stderr
    assert "'requirements': 'tiny pure ===' is not a requirement" in bad.stderr
    target = wheelfarm(
        "build", "ahead", "tinypure==3.0", "--target", "cp311-windows", *admin_args(admin_proxy)
    )
    assert target.code == 2
    assert "'target'" in target.stderr
    assert admin_json(admin_proxy, "builds")["active"] == []


def test_usage_errors_are_exit_2() -> None:
    nothing = wheelfarm("build", "ahead", "--target", TARGET)
    assert nothing.code == 2
    assert "nothing to build" in nothing.stderr
    assert wheelfarm("build", "ahead", "tinypure==3.0").code == 2  # --target is required
    url = wheelfarm("status", "--url", "ftp://example.org/")
    assert url.code == 2
    assert "not an http(s) URL" in url.stderr


def test_unreachable_proxy_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/admin/"
    ran = wheelfarm("status", "--url", url)
    assert ran.code == 2
    assert ran.stderr == f"wheelfarm: cannot reach the admin API at {url}: connection refused" + (
        " (is `wheelfarm serve` running there, with [admin] enabled?)\n"
    )


def test_admin_off_says_so(proxy: ProxyServer) -> None:
    ran = wheelfarm("status", "--url", f"{proxy.url}/admin/")
    assert ran.code == 2
    assert "HTTP 404" in ran.stderr
    assert "[admin] enabled" in ran.stderr


# --- build-ahead picks what the overlay would offer, reading requirements as pip does ---------------


def test_build_ahead_skips_a_release_with_a_wheel_for_the_target(admin_proxy: ProxyServer) -> None:
    # tinypure 2.0 has tinypure-2.0-py3-none-any.whl: the overlay never offers a build for it, so a built
    # wheel would never be listed; the build is wasted work.
    ran = build_ahead(admin_proxy, "tinypure==2.0", extra=("--no-wait", "--json"))
    assert ran.code == 0, ran.output
    (entry,) = json.loads(ran.stdout)["builds"]
    assert entry["state"] != "started"


def test_build_ahead_prefers_a_final_release(
    admin_proxy: ProxyServer, build_index: FakeIndex, tmp_path: Path
) -> None:
    build_index.add_file(
        "tinypure", FakeFile.from_path(make_sdist(tmp_path / "rc", "tinypure", "4.0rc1", {}))
    )
    ran = build_ahead(admin_proxy, "tinypure>=3.0", extra=("--no-wait", "--json"))
    assert ran.code == 0, ran.output
    (entry,) = json.loads(ran.stdout)["builds"]
    assert entry["sdist"] == "tinypure-3.0.tar.gz"  # PEP 440: >=3.0 excludes 4.0rc1


def test_api_reads_a_hashed_requirements_txt(admin_proxy: ProxyServer) -> None:
    # The command line strips hashes and joins continuation lines before it sends; text sent as it is, the
    # API reads the same way (proxy/builds/requirementsfile.py).
    text = f"tinypure==3.0 \\\n    --hash=sha256:{'a' * 64}\n"
    response = httpx.post(
        f"{admin_proxy.url}/admin/api/build-ahead",
        json={"target": TARGET, "requirements_txt": text},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )
    assert response.status_code == 202, response.text
