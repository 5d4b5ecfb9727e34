"""Build-pending links and the builder pool, end to end: real sdists, real sandboxed builds, pip and uv."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import httpx
from buildkit import PIP_UA, TARGET, absolute, build_records, delete_build, files, page, start_builder_proxy
from clientenv import Client
from clients import each_client, install
from dists import in_tree_backend_sdist, make_sdist
from fake_upstream import FakeFile, FakeIndex, FakeUpstreamServer
from fakes import FakeClock, ProxyServer


def test_pending_links_only_where_a_release_lacks_a_wheel(builder_proxy: ProxyServer) -> None:
    listed = files(page(builder_proxy, "tinypure"))
    pending = [name for name, entry in listed.items() if entry.get("_wheelfarm", {}).get("pending")]
    assert pending == ["tinypure-3.0-cp311-cp311-manylinux_2_36_x86_64.whl"]
    entry = listed[pending[0]]
    assert entry["url"].startswith(f"../../build/{TARGET}/tinypure/")
    assert entry["yanked"] is False
    assert entry["_wheelfarm"]["built-from"] == "tinypure-3.0.tar.gz"
    # Order: the pending link sits right after its sdist.
    names = list(listed)
    assert names.index(pending[0]) == names.index("tinypure-3.0.tar.gz") + 1
    # No overlay without a target, on the plain scope, or for a client we cannot build for.
    assert not any("pending" in str(e) for e in page(builder_proxy, "tinypure", scope="")["files"])
    assert not any("pending" in str(e) for e in page(builder_proxy, "tinypure", scope="/plain")["files"])
    arm = page(builder_proxy, "tinypure", scope="/t/cp311-manylinux_2_36_aarch64")
    assert not any("pending" in str(e) for e in arm["files"])
    # pip's User-Agent names the same target.
    response = httpx.get(f"{builder_proxy.url}/simple/tinypure/?format=json", headers={"User-Agent": PIP_UA})
    assert response.headers["Vary"] == "Accept, User-Agent, Accept-Encoding"
    assert response.headers["X-Wheelfarm-Target"] == TARGET
    assert pending[0] in files(response.json())


def test_bad_target_in_url_is_a_400(builder_proxy: ProxyServer) -> None:
    response = httpx.get(f"{builder_proxy.url}/t/cp311-windows/simple/tinypure/")
    assert response.status_code == 400
    assert "not a target" in response.text


@each_client
def test_client_installs_a_built_wheel_and_the_next_install_reuses_it(
    builder_proxy: ProxyServer, client: Client, tmp_path: Path
) -> None:
    first = install(client, builder_proxy.simple_url, ["tinypure==3.0"], tmp_path / "first").check()
    assert first.installed()["tinypure"] == "3.0"
    assert first.run_python("import tinypure; print(tinypure.hello())").strip() == "tinypure 3.0"
    assert "Building wheel for tinypure" not in first.output  # the proxy built it, not the client
    builds = build_records(builder_proxy, "tinypure")
    built = files(page(builder_proxy, "tinypure"))["tinypure-3.0-py2.py3-none-any.whl"]
    assert built["hashes"]["sha256"]
    assert built["core-metadata"]["sha256"]
    wheel = httpx.get(absolute(builder_proxy, "tinypure", built["url"]))
    assert wheel.status_code == 200
    provenance = httpx.get(absolute(builder_proxy, "tinypure", built["_wheelfarm"]["provenance"])).json()
    assert provenance["sdist"]["filename"] == "tinypure-3.0.tar.gz"
    assert provenance["wheel"]["sha256"] == built["hashes"]["sha256"]
    assert provenance["sandbox"]["kind"] == "bubblewrap"
    assert provenance["target"] == TARGET
    log = httpx.get(absolute(builder_proxy, "tinypure", built["_wheelfarm"]["build-log"])).text
    assert "running the backend hooks requires and wheel in the sandbox" in log
    second = install(client, builder_proxy.simple_url, ["tinypure==3.0"], tmp_path / "second").check()
    assert second.installed()["tinypure"] == "3.0"
    assert build_records(builder_proxy, "tinypure") == builds  # no second build


def test_native_extension_is_built_repaired_and_runs(builder_proxy: ProxyServer, tmp_path: Path) -> None:
    result = install(Client.PIP, builder_proxy.simple_url, ["tinynative"], tmp_path / "pip").check()
    assert result.run_python("import tinynative; print(tinynative.add(2, 40))").strip() == "42"
    listed = files(page(builder_proxy, "tinynative"))
    built = [name for name in listed if name.endswith(".whl")]
    # The wheel under its real name, and as an alias under the name its pending link had (locks keep it).
    real = [name for name in built if ".manylinux_2_" in name]
    assert len(real) == 1
    assert "-cp311-cp311-manylinux" in real[0]  # auditwheel gave it a manylinux tag
    assert built == [*real, "tinynative-1.0-cp311-cp311-manylinux_2_36_x86_64.whl"]
    assert listed[built[1]]["url"] == listed[real[0]]["url"]
    assert listed[built[1]]["hashes"] == listed[real[0]]["hashes"]
    again = install(Client.UV, builder_proxy.simple_url, ["tinynative"], tmp_path / "uv").check()
    assert again.run_python("import tinynative; print(tinynative.add(1, 1))").strip() == "2"


def test_failed_build_is_reported_then_remembered(builder_proxy: ProxyServer, tmp_path: Path) -> None:
    listed = files(page(builder_proxy, "brokenpkg"))
    (pending,) = [e for e in listed.values() if e.get("_wheelfarm", {}).get("pending")]
    response = httpx.get(absolute(builder_proxy, "brokenpkg", pending["url"]), timeout=60)
    assert response.status_code == 422
    assert "wheel build failed in build" in response.text
    assert response.reason_phrase.startswith("wheel build failed in build")
    # The cause itself, from the end of the build's output, in the body and the reason phrase pip prints.
    assert "exited with status 1: RuntimeError: no compiler for you" in response.text
    assert "RuntimeError: no compiler for you" in response.reason_phrase
    log_url = response.text.split("build log: ")[1].strip()
    log = httpx.get(log_url).text
    assert "RuntimeError: no compiler for you" in log
    assert "FAILED in build" in log
    # Remembered: the page no longer offers the link; clients see the plain sdist page.
    assert not any(e.get("_wheelfarm", {}).get("pending") for e in page(builder_proxy, "brokenpkg")["files"])
    again = httpx.get(absolute(builder_proxy, "brokenpkg", pending["url"]), timeout=60)
    assert again.status_code == 422
    # pip gets the 4xx with the failure in the reason phrase.
    result = install(Client.PIP, f"{builder_proxy.url}/t/{TARGET}/simple/", ["brokenpkg"], tmp_path / "pip")
    assert result.returncode != 0
    # A retry forgets the failure and offers the link again.
    (record,) = build_records(builder_proxy, "brokenpkg")
    assert delete_build(builder_proxy, record["key"]["sdist_sha256"], record["key"]["target"])
    assert any(e.get("_wheelfarm", {}).get("pending") for e in page(builder_proxy, "brokenpkg")["files"])


def test_a_long_build_answers_503_with_retry_after(
    fake_upstream: FakeUpstreamServer, build_index: FakeIndex, clock: FakeClock, tmp_path: Path
) -> None:
    proxy = start_builder_proxy(fake_upstream, clock, tmp_path / "cache", builder_hold_seconds=0.5)
    try:
        (pending,) = [e for e in page(proxy, "slowpkg")["files"] if e.get("_wheelfarm", {}).get("pending")]
        url = absolute(proxy, "slowpkg", pending["url"])
        started = time.monotonic()
        first = httpx.get(url, timeout=30)
        assert first.status_code == 503
        assert first.headers["Retry-After"] == str(proxy.settings.builder_retry_after)
        assert "building slowpkg-1.0.tar.gz" in first.text
        assert time.monotonic() - started < 3  # held for hold_seconds, not for the whole build
        assert httpx.get(proxy.url + "/healthz").status_code == 200  # the proxy keeps serving meanwhile
        for _ in range(60):
            response = httpx.get(url, timeout=30)
            if response.status_code == 200:
                break
            time.sleep(0.5)
        assert response.status_code == 200
        assert (
            response.headers["Content-Disposition"] == 'attachment; filename="slowpkg-1.0-py3-none-any.whl"'
        )
        assert zipfile.is_zipfile(io.BytesIO(response.content))
    finally:
        proxy.stop()


def test_policy_deny_list_means_no_links(
    fake_upstream: FakeUpstreamServer, build_index: FakeIndex, clock: FakeClock, tmp_path: Path
) -> None:
    proxy = start_builder_proxy(fake_upstream, clock, tmp_path / "cache", builder_deny=("tiny*",))
    try:
        assert not any(e.get("_wheelfarm", {}).get("pending") for e in page(proxy, "tinypure")["files"])
        assert any(e.get("_wheelfarm", {}).get("pending") for e in page(proxy, "slowpkg")["files"])
        denied = httpx.get(f"{proxy.url}/t/{TARGET}/build/{TARGET}/tinypure/{'a' * 64}/x.whl")
        assert denied.status_code == 404
    finally:
        proxy.stop()


def test_builder_cli_builds_alone_and_reproducibly(
    builder_proxy: ProxyServer, sdists: dict[str, Path], tmp_path: Path
) -> None:
    """`wheelfarm builder build` runs a build outside the proxy; the same sdist gives the same bytes."""
    wheels = []
    for run in ("first", "second"):
        out = tmp_path / run
        completed = subprocess.run(
            [str(Path(sys.executable).parent / "wheelfarm"), "builder", "build", str(sdists["tinypure"]),
             "--index-url", f"{builder_proxy.url}/plain/simple/", "--out", str(out)],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert completed.returncode == 0, completed.stderr + completed.stdout
        summary = json.loads(completed.stdout.strip().splitlines()[-1])
        assert summary["ok"] is True
        wheels.append((out / summary["wheel"]).read_bytes())
        assert (out / f"{summary['wheel']}.provenance.json").is_file()
        assert (out / "tinypure-3.0.tar.gz.build.log").is_file()
    assert wheels[0] == wheels[1]  # SOURCE_DATE_EPOCH and the fixed build path make it reproducible


def test_a_project_that_needs_a_missing_toolchain_is_not_offered_again(
    builder_proxy: ProxyServer, build_index: FakeIndex, tmp_path: Path
) -> None:
    """Once a build shows the project compiles Rust (maturin, setuptools-rust) and the builder has no cargo,
    no release of it gets a build-pending link: only that first client met a build that could not work."""
    pyproject = '[build-system]\nrequires = ["maturin>=1,<2"]\nbuild-backend = "maturin"\n'
    for version in ("1.0", "2.0"):
        sdist = make_sdist(tmp_path, "rusty", version, {"pyproject.toml": pyproject, "Cargo.toml": ""})
        build_index.add_file("rusty", FakeFile.from_path(sdist))
    pending = [e for e in page(builder_proxy, "rusty")["files"] if e.get("_wheelfarm", {}).get("pending")]
    assert len(pending) == 2

    first = httpx.get(absolute(builder_proxy, "rusty", pending[-1]["url"]), timeout=60)

    assert first.status_code == 422
    assert "wheel build failed in toolchain: it builds Rust code" in first.text
    after = [e for e in page(builder_proxy, "rusty")["files"] if e.get("_wheelfarm", {}).get("pending")]
    assert after == []  # neither the failed release nor the other one


def test_an_sdist_without_a_top_level_folder_builds_as_pip_would_unpack_it(
    builder_proxy: ProxyServer, build_index: FakeIndex, tmp_path: Path
) -> None:
    """Old maturin sdists (orjson 3.0) hold the project at the archive's root; pip builds them."""
    sdist = in_tree_backend_sdist(tmp_path, "flatpkg", "1.0", "    pass", flat=True)
    with tarfile.open(sdist) as tar:
        assert "pyproject.toml" in tar.getnames()
    build_index.add_file("flatpkg", FakeFile.from_path(sdist))

    result = install(Client.PIP, builder_proxy.simple_url, ["flatpkg"], tmp_path / "pip").check()

    assert result.installed()["flatpkg"] == "1.0"
    assert "Building wheel for flatpkg" not in result.output  # the farm built it, not pip
    assert "flatpkg-1.0-py3-none-any.whl" in files(page(builder_proxy, "flatpkg"))
