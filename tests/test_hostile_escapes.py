"""Hostile build code that reaches out of the sandbox: to the network, the host's secrets and its files.

A PEP 517 backend is arbitrary code, run by the builder for whoever published the sdist. With the network
it could fetch more code or send out what it read; with the host's file system it could read the proxy's
cache, configuration (the admin token) or a home folder, or write there, e.g. a wheel into the cache that
every client then installs. Each build here tries one of these, fails, and its build log says what the
sandbox answered; then the test checks from the host that nothing was read out or written.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx
import pytest
from buildkit import WHEELHOUSE
from dists import make_sdist
from hostile import Farm, last_line, marker, needs_bwrap

pytestmark = needs_bwrap


def test_network_is_unreachable_during_the_build(farm: Farm) -> None:
    body = f"""\
    import socket
    errors = []
    for host in ("127.0.0.1", "::1"):
        try:
            socket.create_connection((host, {farm.port}), timeout=3).close()
        except OSError as exc:
            errors.append(f"connect to {{host}}:{farm.port}: {{exc}}")
    try:
        socket.getaddrinfo("pypi.org", 443)
    except OSError as exc:
        errors.append(f"resolve pypi.org: {{exc}}")
    if len(errors) == 3:
        raise RuntimeError("no network: " + " | ".join(errors))
    print("REACHED THE NETWORK", errors)
"""
    farm.backend_sdist("net-probe", body)

    failure = farm.failed_build("net-probe")

    assert failure.phase == "build"
    assert "REACHED THE NETWORK" not in failure.log
    connect_v4, connect_v6, resolve = last_line(failure.log, "RuntimeError: no network: ").split(" | ")
    for connect in (connect_v4, connect_v6):
        assert re.search(
            r"Network is unreachable|Connection refused|Cannot assign requested address", connect
        )
    assert re.search(r"Temporary failure in name resolution|Name or service not known|No address", resolve)
    # The proxy was listening on that port all along, for the host.
    assert httpx.get(f"http://127.0.0.1:{farm.port}/healthz").status_code == 200


def test_setup_py_that_reaches_for_the_network_fails_in_the_sandbox(farm: Farm) -> None:
    if not sorted(WHEELHOUSE.glob("setuptools-*.whl")):
        pytest.skip("run `make test` (it downloads the build backends into tests/.wheelhouse)")
    setup_py = f"""\
import socket
try:
    socket.create_connection(("127.0.0.1", {farm.port}), timeout=3).close()
except OSError as exc:
    raise SystemExit("setup.py has no network: " + str(exc))
from setuptools import setup
setup(name="setup-net", version="1.0", py_modules=[])
"""
    farm.publish("setup-net", make_sdist(farm.sdists, "setup-net", "1.0", {"setup.py": setup_py}))

    failure = farm.failed_build("setup-net")

    # setuptools' legacy backend runs setup.py for get_requires_for_build_wheel: in the sandbox too.
    assert failure.phase == "requires"
    assert "running the backend hooks requires and wheel in the sandbox" in failure.log
    assert re.search(r"setup.py has no network: .*(Network is unreachable|Connection refused)", failure.log)


def _snooping(reads: list[str], folders: list[str]) -> str:
    """Backend code (indented) that reads ``reads`` and lists ``folders``, what it found in ``report``."""
    return f"""\
    import json, os
    report = {{"read": {{}}, "list": {{}}}}
    for path in {reads!r}:
        try:
            with open(path, "rb") as handle:
                report["read"][path] = handle.read().decode(errors="replace")
        except OSError as exc:
            report["read"][path] = f"refused: {{exc}}"
    for folder in {folders!r}:
        try:
            report["list"][folder] = sorted(os.listdir(folder))
        except OSError as exc:
            report["list"][folder] = f"refused: {{exc}}"
"""


def test_the_build_cannot_read_the_cache_config_or_home(farm: Farm, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = marker("SECRET")
    cache_secret = farm.cache / "secret.txt"
    cache_secret.write_text(secret)
    config = farm.base / "wheelfarm.toml"
    config.write_text(f'[admin]\ntoken = "{secret}"\n')
    monkeypatch.setenv("WHEELFARM_TEST_TOKEN", secret)  # the proxy's environment (its workers inherit it)
    reads = [str(cache_secret), str(config), str(farm.cache / "built") + "/../secret.txt", "/etc/shadow"]
    folders = list(dict.fromkeys([str(farm.cache), str(farm.base), "/root", str(Path.home())]))
    body = (
        _snooping(reads, folders)
        + """\
    report["env"] = sorted(k for k in os.environ if "TOKEN" in k)
    stolen = [v for v in report["read"].values() if not v.startswith("refused: ")]
    stolen += [os.environ[k] for k in report["env"]]
    if not stolen:
        print("SNOOPED " + json.dumps(report), flush=True)
        raise RuntimeError("could not read the proxy's secrets")
    # Smuggle what was read into the wheel's METADATA (and so into the PEP 658 file the proxy serves).
    original = zipfile.ZipFile.writestr
    def writestr(self, name, data, *args, **kwargs):
        if name.endswith("/METADATA"):
            data = data + ("Summary: " + repr(stolen) + "\\n").encode()
        return original(self, name, data, *args, **kwargs)
    zipfile.ZipFile.writestr = writestr
"""
    )
    farm.backend_sdist("snoop", body)

    failure = farm.failed_build("snoop")

    assert failure.phase == "build"
    assert "RuntimeError: could not read the proxy's secrets" in failure.log
    report = json.loads(last_line(failure.log, "SNOOPED "))
    for path in reads:
        assert re.match(r"refused: .*(No such file or directory|Permission denied)", report["read"][path])
    assert report["env"] == []  # the sandbox starts from a clean environment
    # A folder on the way to what the sandbox binds read-only (the interpreter) shows only that path, never
    # the host's files beside it.
    interpreter = re.search(r"interpreter (\S+)", failure.log)
    assert interpreter is not None
    bound = [Path(os.path.realpath(interpreter[1])).parent.parent]
    for folder in folders:
        seen = report["list"][folder]
        allowed = {
            b.relative_to(folder).parts[0] for b in bound if b.is_relative_to(folder) and b != Path(folder)
        }
        assert isinstance(seen, str) or set(seen) <= allowed, f"the sandbox lists {seen} in {folder}"
    assert secret not in failure.log
    for artifact in (farm.cache / "built").rglob("*"):
        assert not artifact.is_file() or secret.encode() not in artifact.read_bytes(), artifact


def test_the_build_can_neither_read_nor_use_the_signing_key(farm: Farm) -> None:
    """The farm's signing key (proxy/provenance/keys.py) is in the cache's private folder: a build that
    looks for it finds nothing, so it cannot sign a statement of its own. Its wheel, built anyway, carries
    the farm's signature over what the farm saw, not anything the build wrote."""
    signing = farm.cache / "private" / "signing"
    key = signing / "current.pem"
    assert b"PRIVATE KEY" in key.read_bytes(), "the farm made no key: the test proves nothing"
    reads = [str(key), str(signing / "keyring.json"), f"/proc/1/root{key}"]
    folders = [str(signing), str(farm.cache / "private")]
    body = (
        _snooping(reads, folders)
        + """\
    seen = [*report["read"].values(), *report["list"].values()]
    found = [v for v in seen if not str(v).startswith("refused: ")]
    print("SNOOPED " + json.dumps(report), flush=True)
    if found:
        raise RuntimeError("READ THE SIGNING KEY: " + repr(found)[:2000])
"""
    )
    farm.backend_sdist("key-snoop", body)

    built = farm.build("key-snoop")
    assert built.status_code == 200, f"the build reached the signing key: {built.text[:3000]}"
    log = farm.build_log("key-snoop")
    report = json.loads(last_line(log, "SNOOPED "))
    for path in reads:
        assert re.match(r"refused: .*(No such file or directory|Permission denied)", report["read"][path]), (
            path
        )
    for folder in folders:
        assert str(report["list"][folder]).startswith("refused: "), folder
    assert "READ THE SIGNING KEY" not in log
    assert key.read_bytes().count(b"PRIVATE KEY") == 2  # untouched (BEGIN and END lines)


def test_writes_outside_the_work_folder_do_not_reach_the_host(farm: Farm) -> None:
    host_tmp = Path("/tmp") / marker("wheelfarm-escape")
    in_cache = farm.cache / marker("escape")
    in_base = farm.base / marker("escape")
    dev_shm = Path("/dev/shm") / marker("wheelfarm-escape")
    body = f"""\
    import os
    results = []
    for path in ({str(host_tmp)!r}, {str(in_cache)!r}, {str(in_base)!r}, "/usr/wheelfarm-escape",
                 "/build/../wheelfarm-escape", {str(dev_shm)!r}):
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as handle:
                handle.write("escaped")
            results.append(f"wrote {{path}}")
        except OSError as exc:
            results.append(f"write {{path}}: {{exc}}")
    raise RuntimeError("escape attempts: " + " | ".join(results))
"""
    farm.backend_sdist("scribbler", body)

    failure = farm.failed_build("scribbler")

    assert failure.phase == "build"
    results = last_line(failure.log, "RuntimeError: escape attempts: ").split(" | ")
    # /tmp is the sandbox's own: the write succeeds there, and the host never sees it.
    assert results[0] == f"wrote {host_tmp}"
    assert "Read-only file system" in results[3], results[3]
    for path in (
        host_tmp,
        in_cache,
        in_base,
        dev_shm,
        Path("/usr/wheelfarm-escape"),
        Path("/wheelfarm-escape"),
    ):
        assert not path.exists(), f"the build wrote {path} on the host"
