"""The Docker image, built from this checkout and run with the options README.md's "Docker" section gives.

With them, the container runs as uid 10001, passes the sandbox self-check, serves the admin page, and a real
pip on the host installs sdist-only projects through it as wheels the container built (a pure one and a C
extension). Without them, it still serves, builds nothing, and says which option is missing.

Needs a Docker engine: skipped when `docker info` gets no answer. The image's base is WHEELFARM_DOCKER_BASE
if set (e.g. python:3.11-slim-bookworm, the Dockerfile's default, with its extra interpreters); otherwise a
stand-in made here by tests/docker/make_base.sh (mmdebstrap, as root) with no extra interpreters, for
machines that reach Debian's archive and the package index but no container registry. Only `docker build`
talks to the package index; the containers share the host's network (`--network host`: the engine may have
no bridge) so they reach the fake upstream on 127.0.0.1, which is all they ask for pages and files.
`make test-docker` installs and starts what this needs and runs it; `make test` does not (it takes minutes).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
from buildkit import TARGET
from clientenv import Client
from clients import install
from fake_upstream import FakeIndex, FakeUpstreamServer
from fakes import free_port

pytestmark = [pytest.mark.docker, pytest.mark.timeout(3600)]

ROOT: Final = Path(__file__).resolve().parent.parent
MAKE_BASE: Final = ROOT / "tests" / "docker" / "make_base.sh"
STAND_IN_BASE: Final = "wheelfarm-test-base:bookworm"
IMAGE: Final = "wheelfarm:test"
CACHE: Final = "/var/cache/wheelfarm"  # the image's VOLUME
IMAGE_UID: Final = 10001
START_TIMEOUT: Final = 60.0
SELF_CHECK_TIMEOUT: Final = 180.0


def docker(*args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and completed.returncode != 0:
        output = (completed.stdout + completed.stderr)[-8000:]
        raise AssertionError(f"docker {shlex.join(args)} exited {completed.returncode}:\n{output}")
    return completed


def readme_run_options() -> list[str]:
    """The security options of README.md's `docker run` line, the one in its "## Docker" section.

    Its other options are checked to be the ones this test replaces: `-p` (discarded with the host's
    network) and `-v NAME:/var/cache/wheelfarm` (a volume of each test's own); anything else fails the test,
    so a README that gains an option is run with it or this test is changed."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Docker\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    words = shlex.split(block.replace("\\\n", " "))
    words = words[words.index("run", words.index("docker")) + 1 :]
    options: list[str] = []
    while len(words) > 1:
        flag, value, *words = words
        if flag in ("-p", "--publish"):
            continue
        if flag in ("-v", "--volume"):
            assert value.endswith(":" + CACHE), f"README.md mounts the cache elsewhere: {value}"
            continue
        assert flag == "--security-opt", f"README.md's docker run has an option this test lacks: {flag}"
        options += [flag, value]
    assert words == ["wheelfarm"], f"README.md's docker run ends with {words}, not the image's name"
    return options


@pytest.fixture(scope="module")
def engine() -> str:
    """The Docker engine's version, or the module is skipped."""
    if shutil.which("docker") is None:
        pytest.skip("no docker command here (`make test-docker` installs Docker and runs this test)")
    try:
        info = docker("info", "--format", "{{.ServerVersion}}", timeout=30, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip("no Docker engine answers: `docker info` timed out")
    if info.returncode != 0 or not info.stdout.strip():
        pytest.skip(f"no Docker engine answers: `docker info` says {info.stderr.strip()[-300:]!r}")
    return info.stdout.strip()


@pytest.fixture(scope="module")
def image(engine: str) -> str:
    """The image, built from this checkout (the engine's cache makes a rebuild of unchanged files quick)."""
    base = os.environ.get("WHEELFARM_DOCKER_BASE", "")
    build_args = ["--build-arg", f"BASE_IMAGE={base or STAND_IN_BASE}"]
    if not base:
        build_args += ["--build-arg", "EXTRA_PYTHONS="]  # no interpreters to download: the base's own only
        if docker("image", "inspect", STAND_IN_BASE, check=False).returncode != 0:
            if shutil.which("mmdebstrap") is None:
                pytest.fail(
                    f"the stand-in base {STAND_IN_BASE} is missing and mmdebstrap is not installed "
                    "(`apt-get install mmdebstrap`), or set WHEELFARM_DOCKER_BASE to a base the engine has",
                    pytrace=False,
                )
            started = time.monotonic()
            made = subprocess.run(
                [str(MAKE_BASE), STAND_IN_BASE], capture_output=True, text=True, timeout=1800, check=False
            )
            assert made.returncode == 0, f"{MAKE_BASE} failed:\n{(made.stdout + made.stderr)[-8000:]}"
            print(f"\ndocker image test: stand-in base made in {time.monotonic() - started:.0f} s")
    started = time.monotonic()
    # The build's RUN steps share the host's network: the engine may have no bridge.
    docker("build", "--network", "host", *build_args, "--tag", IMAGE, str(ROOT), timeout=3600)
    print(f"\ndocker image test: image built in {time.monotonic() - started:.0f} s (engine {engine})")
    return IMAGE


@dataclass(frozen=True)
class Container:
    name: str
    url: str

    @property
    def simple_url(self) -> str:
        return self.url + "/simple/"

    def logs(self) -> str:
        completed = docker("logs", self.name)
        return completed.stdout + completed.stderr

    def events(self, event: str) -> list[dict[str, Any]]:
        """The JSON log lines of ``event`` (every line must be JSON: the image logs in JSON)."""
        lines = [json.loads(line) for line in self.logs().splitlines() if line.strip()]
        return [line for line in lines if line.get("event") == event]

    def execute(self, *command: str) -> str:
        return docker("exec", self.name, *command).stdout

    def running(self) -> bool:
        state = docker("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return state.stdout.strip() == "true"

    def builder(self) -> dict[str, Any]:
        """The builder's state from /healthz, once the start-up self-check is over."""
        deadline = time.monotonic() + SELF_CHECK_TIMEOUT
        while True:
            health = httpx.get(self.url + "/healthz", timeout=10).json()
            assert health["status"] == "ok", health
            state: dict[str, Any] = health["builder"]
            if state["state"] != "checking":
                return state
            assert time.monotonic() < deadline, f"the self-check did not end:\n{self.logs()}"
            time.sleep(0.2)

    def page(self, project: str) -> list[dict[str, Any]]:
        """The files of ``project``'s page for the host's target (JSON)."""
        url = f"{self.url}/t/{TARGET}/simple/{project}/?format=json"
        response = httpx.get(url, timeout=60)
        response.raise_for_status()
        files: list[dict[str, Any]] = response.json()["files"]
        return files

    def provenance(self, project: str, filename: str) -> dict[str, Any]:
        """The provenance document of a wheel the container built, listed on ``project``'s page."""
        (entry,) = [entry for entry in self.page(project) if entry["filename"] == filename]
        page_url = httpx.URL(f"{self.url}/t/{TARGET}/simple/{project}/")
        document: dict[str, Any] = httpx.get(
            page_url.join(entry["_wheelfarm"]["provenance"]), timeout=30
        ).json()
        return document


@contextlib.contextmanager
def container(image: str, upstream: FakeUpstreamServer, options: Sequence[str]) -> Iterator[Container]:
    """The image running with ``options``, the host's network, a port of its own, a fresh named volume for
    the cache and the admin page on; removed (with its volume) when the block ends."""
    port = free_port()
    name = f"wheelfarm-test-{uuid.uuid4().hex[:12]}"
    settings = {
        "WHEELFARM_SERVER_PORT": str(port),
        "WHEELFARM_UPSTREAM_URL": upstream.simple_url,
        "WHEELFARM_ADMIN_ENABLED": "true",
    }
    environment = [word for key, value in settings.items() for word in ("--env", f"{key}={value}")]
    docker(
        "run", "--detach", "--name", name, "--network", "host", "--volume", f"{name}:{CACHE}",
        *options, *environment, image,
    )  # fmt: skip
    started = Container(name, f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(started.url + "/healthz"):
            assert started.running(), f"the container stopped:\n{started.logs()}"
            assert time.monotonic() < deadline, f"no answer on {started.url}:\n{started.logs()}"
            time.sleep(0.2)
        yield started
    finally:
        docker("rm", "--force", name, check=False)
        docker("volume", "rm", name, check=False)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_the_image_builds_wheels_as_uid_10001_with_the_readme_options(
    image: str, fake_upstream: FakeUpstreamServer, build_index: FakeIndex, tmp_path: Path
) -> None:
    started = time.monotonic()
    with container(image, fake_upstream, readme_run_options()) as farm:
        state = farm.builder()
        print(f"\ndocker image test: up and self-checked in {time.monotonic() - started:.1f} s")
        assert state == {"state": "ready"}, farm.logs()
        assert len(farm.events("builder_self_check_passed")) == 1
        # The server itself (PID 1, the entry point) runs as the image's user, and so does docker exec.
        status = farm.execute("cat", "/proc/1/status")
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == [str(IMAGE_UID)] * 4
        assert farm.execute("id", "-u").strip() == str(IMAGE_UID)
        # The image's own HEALTHCHECK command passes (on the port the server was moved to).
        inspected = docker("image", "inspect", "--format", "{{json .Config.Healthcheck.Test}}", image).stdout
        kind, *command = json.loads(inspected)
        assert kind == "CMD"
        farm.execute(*command)
        admin = httpx.get(farm.url + "/admin/", timeout=30)
        assert admin.status_code == 200
        assert admin.headers["Content-Type"].startswith("text/html")
        summary = httpx.get(farm.url + "/admin/api/summary", timeout=30).json()
        assert summary["builder"] == {"state": "ready"}

        build_started = time.monotonic()
        result = install(
            Client.PIP, farm.simple_url, ["tinypure==3.0", "tinynative==1.0"], tmp_path / "pip", timeout=600
        ).check()
        took = time.monotonic() - build_started
        print(f"docker image test: pip installed two wheels the container built in {took:.1f} s")
        assert "Building wheel" not in result.output, result.output  # the container built them, not pip
        assert result.run_python("import tinypure; print(tinypure.hello())").strip() == "tinypure 3.0"
        assert result.run_python("import tinynative; print(tinynative.add(2, 40))").strip() == "42"
        pure = farm.provenance("tinypure", "tinypure-3.0-py2.py3-none-any.whl")
        assert pure["sandbox"]["kind"] == "bubblewrap"
        assert pure["target"] == TARGET
        # auditwheel (and the patchelf it runs) gave the C extension a manylinux tag, under its real name.
        native = farm.provenance("tinynative", "tinynative-1.0-cp311-cp311-manylinux_2_36_x86_64.whl")
        assert native["repair"].startswith("auditwheel: tinynative-1.0-cp311-cp311-manylinux"), native


# The options of README.md's docker run line, each named in the reason when it is missing.
NEEDED: Final = ("seccomp=unconfined", "systempaths=unconfined")


@pytest.mark.parametrize(
    "kept", [(), ("seccomp=unconfined",), ("systempaths=unconfined",)], ids=["none", "seccomp", "systempaths"]
)
def test_without_the_readme_options_it_serves_builds_nothing_and_says_which_is_missing(
    image: str,
    fake_upstream: FakeUpstreamServer,
    build_index: FakeIndex,
    tmp_path: Path,
    kept: tuple[str, ...],
) -> None:
    assert sorted(readme_run_options()[1::2]) == sorted(NEEDED), "README.md's options changed: update NEEDED"
    options = [word for value in kept for word in ("--security-opt", value)]
    with container(image, fake_upstream, options) as farm:
        state = farm.builder()
        assert state["state"] == "unavailable", state
        reason = state["reason"]
        assert reason.startswith("the sandbox self-check failed in "), reason
        for option in NEEDED:
            assert (f"--security-opt {option}" in reason) == (option not in kept), (option, reason)
        assert [event["reason"] for event in farm.events("builds_disabled")] == [reason]
        summary = httpx.get(farm.url + "/admin/api/summary", timeout=30).json()
        assert summary["builder"] == state
        # Plain pages: no build link for the sdist-only release; wheels are still served.
        files = farm.page("tinypure")
        assert "tinypure-3.0.tar.gz" in {entry["filename"] for entry in files}
        assert not any(entry.get("_wheelfarm", {}).get("pending") for entry in files), files
        result = install(Client.PIP, farm.simple_url, ["tinypure==2.0"], tmp_path / "pip").check()
        assert result.installed()["tinypure"] == "2.0"
