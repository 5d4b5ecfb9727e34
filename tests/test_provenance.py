"""Signed provenance of built wheels (proxy/provenance): an in-toto statement with a SLSA v1 predicate in a
DSSE envelope signed by the farm's key, its PEP 740 provenance object on the pages, the keys at the
well-known URL, and ``wheelfarm verify`` failing clearly on each kind of tampering."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import orjson
import pytest
from buildkit import TARGET
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from dists import make_sdist
from hostile import Farm, needs_bwrap
from serve import WHEELFARM

from builder.bundled import MAX_TRACED, bundled_libraries
from builder.jobs import BuildKey, BuildRecord, BuildState
from proxy.provenance.attest import Attestor, NotVerified, verified_statement
from proxy.provenance.keys import FarmKeys, KnownKey, UnusableKey
from proxy.provenance.statement import BUILD_TYPE, PREDICATE_TYPE, wheel_statement
from proxy.provenance.verify import Farm as FarmClient  # what verify asks of a farm
from proxy.provenance.verify import Wheel, check, wheels_in

pytestmark = needs_bwrap
SHA_A, SHA_B, SHA_C, SHA_D = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)


def _record(**changes: object) -> BuildRecord:
    record = BuildRecord(
        BuildKey(SHA_A, TARGET), BuildState.DONE, "demo", "1.0", "demo-1.0.tar.gz", 1_800_000_000.0,
        1_800_000_030.0, wheel_filename="demo-1.0-py3-none-any.whl", wheel_sha256=SHA_B, log_sha256=SHA_C,
        metadata_sha256=SHA_D, made_by="builder-arm-1",
    )  # fmt: skip
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


FACTS = {
    "sdist": {"filename": "demo-1.0.tar.gz", "url": "https://files.example/demo-1.0.tar.gz", "sha256": SHA_A},
    "interpreter": {"path": "/usr/bin/python3.11", "version": "3.11.2"},
    "build_system": {
        "requires": ["setuptools>=61"],
        "dynamic_requires": [],
        "backend": "setuptools.build_meta",
        "installed": [
            {"filename": "setuptools-80.0-py3-none-any.whl", "sha256": "e" * 64, "url": "https://x/s.whl"}
        ],
    },
    "bundled_libraries": [
        {
            "name": "demo.libs/libz-0a1b2c3d.so.1.2.13",
            "sha256": "f" * 64,
            "source_path": "/usr/lib/x/libz.so.1.2.13",
            "package": "zlib1g",
            "package_version": "1:1.2.13.dfsg-1",
        },
    ],
    "reproducibility": {"source_date_epoch": 1700000000, "build_path": "/build/src/demo"},
}


def test_the_statement_is_in_toto_v1_with_a_slsa_v1_predicate() -> None:
    statement = wheel_statement(_record(), FACTS, "wheelfarm-builder/2")
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["subject"] == [{"name": "demo-1.0-py3-none-any.whl", "digest": {"sha256": SHA_B}}]
    assert statement["predicateType"] == PREDICATE_TYPE
    definition = statement["predicate"]["buildDefinition"]
    assert definition["buildType"] == BUILD_TYPE
    assert definition["externalParameters"] == {
        "sdist": {"name": "demo-1.0.tar.gz", "uri": FACTS["sdist"]["url"], "digest": {"sha256": SHA_A}},  # type: ignore[index]
        "target": TARGET,
    }
    resolved = {each["name"]: each for each in definition["resolvedDependencies"]}
    assert resolved["demo-1.0.tar.gz"]["digest"] == {"sha256": SHA_A}
    assert resolved["setuptools-80.0-py3-none-any.whl"]["digest"] == {"sha256": "e" * 64}
    assert resolved["cpython"]["annotations"] == {"version": "3.11.2"}
    run = statement["predicate"]["runDetails"]
    assert run["builder"]["id"] == "urn:wheelfarm:builder:builder-arm-1"
    assert run["metadata"]["startedOn"] == "2027-01-15T08:00:00Z"
    assert run["metadata"]["finishedOn"] == "2027-01-15T08:00:30Z"
    byproducts = {each["name"]: each for each in run["byproducts"]}
    assert byproducts["build.log"]["digest"] == {"sha256": SHA_C}
    assert byproducts["METADATA"]["digest"] == {"sha256": SHA_D}
    assert byproducts["demo.libs/libz-0a1b2c3d.so.1.2.13"]["annotations"]["package"] == "zlib1g"
    with pytest.raises(ValueError, match="left no wheel"):
        wheel_statement(_record(wheel_sha256=""), FACTS, "wheelfarm-builder/2")


def test_keys_are_private_shared_by_processes_and_rotation_keeps_old_signatures_verifiable(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "cache" / "private" / "signing"
    keys = FarmKeys.load(folder)
    assert FarmKeys.load(folder).keyid == keys.keyid, "a second process signs with the same key"
    assert (folder.stat().st_mode & 0o777, (folder / "current.pem").stat().st_mode & 0o777) == (0o700, 0o600)
    assert folder.parent.stat().st_mode & 0o777 == 0o700
    old = Attestor(keys, "v").attest(_record(finished_at=time.time() - 60), FACTS)

    rotated = FarmKeys.rotate(folder)
    assert rotated.keyid != keys.keyid
    assert b"PRIVATE KEY" in (folder / "current.pem").read_bytes()
    published = rotated.published()
    assert published["current"] == rotated.keyid
    assert [(k["keyid"], k["retired"] is not None) for k in published["keys"]] == [
        (keys.keyid, True), (rotated.keyid, False)
    ]  # fmt: skip
    assert "BEGIN PUBLIC KEY" in published["keys"][0]["public_key_pem"]
    wheel = Wheel("demo-1.0-py3-none-any.whl", SHA_B, "test")
    assert check(wheel, old.envelope, rotated.known, None).ok, "a signature made before the rotation verifies"

    # The old key, had it leaked, cannot sign anything new: what it signs after its retirement fails.
    late = Attestor(keys, "v").attest(_record(finished_at=time.time() + 60), FACTS)
    verdict = check(wheel, late.envelope, rotated.known, None)
    assert not verdict.ok
    assert re.search(r"signed by key \w+ after it was retired", verdict.message)


def test_an_operator_key_must_be_ed25519_or_p256(tmp_path: Path) -> None:
    def pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, name: str) -> Path:
        path = tmp_path / name
        path.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ))  # fmt: skip
        return path

    p256 = FarmKeys.load(tmp_path / "signing", pem(ec.generate_private_key(ec.SECP256R1()), "p256.pem"))
    assert p256.signer.public_key.keytype == "ecdsa"
    envelope = Attestor(p256, "v").attest(_record(), FACTS).envelope
    assert check(Wheel("demo-1.0-py3-none-any.whl", SHA_B, "test"), envelope, p256.known, None).ok
    with pytest.raises(UnusableKey, match="secp384r1"):
        FarmKeys.load(tmp_path / "other", pem(ec.generate_private_key(ec.SECP384R1()), "p384.pem"))
    with pytest.raises(UnusableKey, match="RSAPrivateKey"):
        FarmKeys.load(tmp_path / "other", pem(rsa.generate_private_key(65537, 2048), "rsa.pem"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    with pytest.raises(UnusableKey, match="not a PEM private key"):
        FarmKeys.load(tmp_path / "other", garbage)


def test_verification_names_what_does_not_match(tmp_path: Path) -> None:
    keys = FarmKeys.load(tmp_path / "signing")
    stranger = FarmKeys.load(tmp_path / "stranger")
    envelope = Attestor(keys, "v").attest(_record(), FACTS).envelope
    known = [each.key for each in keys.known]
    name = "demo-1.0-py3-none-any.whl"
    assert verified_statement(envelope, known, name, SHA_B)["subject"][0]["name"] == name

    with pytest.raises(
        NotVerified, match=rf"is for {re.escape(name)} sha256 {SHA_B}, not {re.escape(name)} sha256 {SHA_C}"
    ):
        verified_statement(envelope, known, name, SHA_C)  # a tampered wheel
    with pytest.raises(NotVerified, match="signed by unknown key"):
        verified_statement(envelope, [each.key for each in stranger.known], name, SHA_B)
    data = json.loads(envelope)
    statement = json.loads(base64.b64decode(data["payload"]))
    statement["subject"][0]["digest"]["sha256"] = SHA_C
    data["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    with pytest.raises(NotVerified, match="signature does not verify"):
        verified_statement(json.dumps(data).encode(), known, name, SHA_C)  # a tampered envelope
    data = json.loads(envelope)
    data["payloadType"] = "text/plain"
    with pytest.raises(NotVerified, match="not an in-toto statement"):
        verified_statement(json.dumps(data).encode(), known, name, SHA_B)
    with pytest.raises(NotVerified, match="not a DSSE envelope"):
        verified_statement(b"{}", known, name, SHA_B)
    assert check(Wheel(name, SHA_B, "test"), None, keys.known, None).message.startswith("no provenance")


def _verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(WHEELFARM), "verify", *args], capture_output=True, text=True, timeout=120)


def test_a_built_wheel_carries_signed_provenance_that_verify_checks(farm: Farm, tmp_path: Path) -> None:
    sdist = farm.backend_sdist("attested", "    pass")
    response = farm.built_wheel("attested")
    wheel_name = re.search(r'filename="([^"]+)"', response.headers["Content-Disposition"])[1]  # type: ignore[index]
    wheel = tmp_path / wheel_name
    wheel.write_bytes(response.content)
    wheel_sha = hashlib.sha256(response.content).hexdigest()
    scope = httpx.URL(f"{farm.proxy.url}/t/{TARGET}/simple/attested/")

    (entry,) = [
        e
        for e in httpx.get(scope.join("?format=json"), timeout=30).json()["files"]
        if e["filename"] == wheel_name
    ]
    pep740 = httpx.get(scope.join(entry["provenance"]), timeout=30).json()
    envelope = httpx.get(scope.join(entry["_wheelfarm"]["attestation"]), timeout=30).content
    published = httpx.get(f"{farm.proxy.url}/.well-known/wheelfarm/keys.json", timeout=30).json()
    keys = [KnownKey.from_json(each) for each in published["keys"]]
    assert any(key.key.keyid == published["current"] for key in keys)

    statement = verified_statement(envelope, [key.key for key in keys], wheel_name, wheel_sha)
    definition = statement["predicate"]["buildDefinition"]
    assert (
        definition["externalParameters"]["sdist"]["digest"]["sha256"]
        == hashlib.sha256(sdist.read_bytes()).hexdigest()
    )
    assert definition["externalParameters"]["target"] == TARGET
    log = httpx.get(scope.join(entry["_wheelfarm"]["build-log"]), timeout=30).content
    byproducts = {
        each["name"]: each["digest"]["sha256"] for each in statement["predicate"]["runDetails"]["byproducts"]
    }
    assert byproducts["build.log"] == hashlib.sha256(log).hexdigest()
    # PEP 740: the same statement and signature, wrapped; the HTML page links it too.
    (bundle,) = pep740["attestation_bundles"]
    assert bundle["publisher"]["kind"] == "wheelfarm"
    (attestation,) = bundle["attestations"]
    dsse = json.loads(envelope)
    assert base64.b64decode(attestation["envelope"]["statement"]) == base64.b64decode(dsse["payload"])
    assert attestation["envelope"]["signature"] == dsse["signatures"][0]["sig"]
    assert attestation["verification_material"]["wheelfarm_keyid"] == dsse["signatures"][0]["keyid"]
    html = httpx.get(scope, timeout=30).text
    assert re.search(rf'<a href="[^"]+"[^>]* data-provenance="[^"]+"[^>]*>{re.escape(wheel_name)}</a>', html)

    ran = _verify("--farm", farm.proxy.url, str(wheel))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert re.match(rf"OK   {re.escape(wheel_name)}: signed by \w+; built from attested-1.0.tar.gz .* "
                    r"sdist upstream: listed, not yanked; the farm's second build: not made yet",
                    ran.stdout)  # fmt: skip
    # Second builds are off on this farm: a policy that wants a reproduced wheel refuses it.
    required = _verify("--farm", farm.proxy.url, "--require-reproduced", str(wheel))
    assert required.returncode == 1, required.stdout + required.stderr
    assert required.stdout.startswith(f"FAIL {wheel_name}: ")
    assert required.stdout.rstrip().endswith("not made yet (--require-reproduced)")

    # A pip report names the wheel by URL and sha256: the real pip's, through the farm.
    report = tmp_path / "report.json"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PIP_CONFIG_FILE": "/dev/null",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}  # fmt: skip
    index = str(scope.join(".."))
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps",
         "--only-binary", ":all:", "--report", str(report), "--index-url", index, "attested"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stderr
    ran = _verify("--farm", farm.proxy.url, str(report))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.startswith(f"OK   {wheel_name}:")

    # Tampered: the wheel changed (the farm has no attestation for those bytes; the one beside it is for
    # the original), an envelope from another key (a pinned keys file that does not name it).
    tampered = tmp_path / "t" / wheel_name
    tampered.parent.mkdir()
    tampered.write_bytes(response.content + b"\0")
    ran = _verify("--farm", farm.proxy.url, str(tampered))
    assert ran.returncode == 1
    assert ran.stdout.startswith("FAIL")
    assert "no provenance" in ran.stdout
    (tampered.parent / (wheel_name + ".dsse.json")).write_bytes(envelope)
    ran = _verify("--farm", farm.proxy.url, str(tampered))
    assert ran.returncode == 1
    assert f"is for {wheel_name} sha256 {wheel_sha}, not" in ran.stdout
    pinned = tmp_path / "other-keys.json"
    pinned.write_bytes(orjson.dumps(FarmKeys.load(tmp_path / "other").published()))
    ran = _verify("--offline", "--keys", str(pinned), str(wheel.parent / wheel_name))
    assert ran.returncode == 1
    assert "signed by unknown key" in ran.stdout or "no provenance" in ran.stdout
    (wheel.parent / (wheel_name + ".dsse.json")).write_bytes(envelope)
    ran = _verify("--offline", "--keys", str(pinned), str(wheel))
    assert ran.returncode == 1
    assert "signed by unknown key" in ran.stdout

    # Installed: pip copies METADATA as is, by which the farm finds the signed wheel; every installed file
    # must still hash as the signed wheel's RECORD says.
    site = tmp_path / "site"
    installing = [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)]
    assert subprocess.run(installing, capture_output=True, env=env, timeout=120).returncode == 0
    ran = _verify("--farm", farm.proxy.url, str(site))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.startswith(f"OK   {wheel_name}: installed in {site}, every file as signed")
    (site / "attested.py").write_text("import os; os.system('echo pwned')\n")
    ran = _verify("--farm", farm.proxy.url, str(site))
    assert ran.returncode == 1
    assert f"FAIL {wheel_name}: installed in {site}, but changed since: attested.py" in ran.stdout

    # The sdist yanked upstream: the wheel built from it fails the online check.
    farm.index.yank(sdist.name, "broken build")
    farm.proxy.clock.advance(3600)  # past the page TTL: the farm asks upstream again
    ran = _verify("--farm", farm.proxy.url, str(wheel))
    assert ran.returncode == 1
    assert "the sdist attested-1.0.tar.gz it was built from is yanked upstream: broken build" in ran.stdout


BZ_LINKED_C = """\
#include <Python.h>
/* From libbz2, which auditwheel must graft: no manylinux policy allows it. */
extern const char *BZ2_bzlibVersion(void);
static PyObject *version(PyObject *self, PyObject *args) { return PyUnicode_FromString(BZ2_bzlibVersion()); }
static PyMethodDef methods[] = {{"version", version, METH_NOARGS, ""}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "bzlinked", NULL, -1, methods};
PyMODINIT_FUNC PyInit_bzlinked(void) { return PyModule_Create(&module); }
"""
BZ_LINKED_SETUP = """\
from setuptools import Extension, setup
setup(name="bzlinked", version="1.0",
      ext_modules=[Extension("bzlinked", ["bzlinked.c"], extra_link_args=["-l:libbz2.so.1.0"])])
"""


def test_the_libraries_auditwheel_bundles_are_byproducts_with_their_debian_package(farm: Farm) -> None:
    if not Path("/lib/x86_64-linux-gnu/libbz2.so.1.0").exists():
        pytest.skip("needs Debian's libbz2-1.0 (x86_64)")
    files = {"setup.py": BZ_LINKED_SETUP, "bzlinked.c": BZ_LINKED_C}
    farm.publish("bzlinked", make_sdist(farm.sdists, "bzlinked", "1.0", files))
    response = farm.built_wheel("bzlinked")
    wheel_name = re.search(r'filename="([^"]+)"', response.headers["Content-Disposition"])[1]  # type: ignore[index]
    scope = httpx.URL(f"{farm.proxy.url}/t/{TARGET}/simple/bzlinked/")
    entries = httpx.get(scope.join("?format=json"), timeout=30).json()["files"]
    (entry,) = [e for e in entries if e["filename"] == wheel_name]
    envelope = httpx.get(scope.join(entry["_wheelfarm"]["attestation"]), timeout=30).content
    payload = json.loads(base64.b64decode(json.loads(envelope)["payload"]))
    (library,) = [b for b in payload["predicate"]["runDetails"]["byproducts"] if ".libs/" in b["name"]]
    assert re.fullmatch(r"bzlinked\.libs/libbz2-[0-9a-f]{8}\.so\.1\.0\.\d+", library["name"])
    with zipfile.ZipFile(io.BytesIO(response.content)) as wheel:
        assert library["digest"]["sha256"] == hashlib.sha256(wheel.read(library["name"])).hexdigest()
    source = library["annotations"]["source_path"]
    assert re.fullmatch(r"(/usr)?/lib/x86_64-linux-gnu/libbz2\.so\.1\.0\.\d+", source)
    version = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "libbz2-1.0"], capture_output=True, text=True
    )
    assert library["annotations"]["package"] == "libbz2-1.0"
    assert library["annotations"]["package_version"] == version.stdout.strip()
    # The hash in the grafted name is the original's: the byproduct names the very file that was copied.
    original = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    assert library["name"].split("libbz2-")[1].startswith(original[:8])


def test_verify_reads_the_wheels_that_locks_and_reports_name(tmp_path: Path) -> None:
    farm_url = "http://farm.test:8080"
    built = f"{farm_url}/built/{SHA_A}/{TARGET}/{SHA_B}/demo-1.0-cp311-cp311-manylinux_2_36_x86_64.whl"
    elsewhere = "https://files.example/packages/other-2.0-py3-none-any.whl"
    uv_lock = tmp_path / "uv.lock"
    uv_lock.write_text(
        "version = 1\n"
        '[[package]]\nname = "demo"\nversion = "1.0"\n'
        f'wheels = [{{ url = "{built}", hash = "sha256:{SHA_B}" }}]\n'
        '[[package]]\nname = "other"\nversion = "2.0"\n'
        f'sdist = {{ url = "https://files.example/other-2.0.tar.gz", hash = "sha256:{SHA_C}" }}\n'
        f'wheels = [{{ url = "{elsewhere}", hash = "sha256:{SHA_D}" }}]\n'
    )
    pylock = tmp_path / "pylock.toml"
    pylock.write_text(
        'lock-version = "1.0"\ncreated-by = "test"\n'
        f'[[packages]]\nname = "demo"\nversion = "1.0"\n[[packages.wheels]]\nurl = "{built}"\n'
        f'hashes = {{ sha256 = "{SHA_B}" }}\n'
    )
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"install": [
        {"download_info": {"url": built, "archive_info": {"hashes": {"sha256": SHA_B}}}},
        {"download_info": {"url": "https://files.example/x-1.0.tar.gz", "archive_info": {"hashes": {}}}},
    ]}))  # fmt: skip
    farm = FarmClient(farm_url)
    for path in (uv_lock, pylock, report):
        found = list(wheels_in(path))
        mine = [w for w in found if farm.serves(w.url)]
        assert [(w.filename, w.sha256) for w in mine] == [(built.rsplit("/", 1)[1], SHA_B)], path
    assert [w.url for w in wheels_in(uv_lock) if not farm.serves(w.url)] == [elsewhere]
    with pytest.raises(ValueError, match="not a wheel, a pip report"):
        list(wheels_in(tmp_path / "notes.txt"))


def test_many_grafted_names_cost_one_look_each_and_at_most_max_traced(tmp_path: Path) -> None:
    """The member names are the build's: a thousand copies of one name trace the original once, and past
    MAX_TRACED distinct names the rest are listed untraced (each would cost file hashing and dpkg runs)."""
    original = Path("/lib/x86_64-linux-gnu/libbz2.so.1.0.4")
    if not original.exists():
        pytest.skip("needs Debian 12's libbz2-1.0 (x86_64)")
    prefix = hashlib.sha256(original.read_bytes()).hexdigest()[:8]
    wheel = tmp_path / "evil-1.0-cp311-cp311-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for n in range(1000):
            archive.writestr(f"evil{n}.libs/libbz2-{prefix}.so.1.0.4", b"x")  # 1000 names, 1 original
        for n in range(MAX_TRACED + 10):
            archive.writestr(f"evil.libs/libfake{n}-{n:08x}.so.1", b"y")
    started = time.monotonic()
    found = bundled_libraries(wheel)
    assert time.monotonic() - started < 30
    same = [b for b in found if "libbz2" in b.name]
    assert len(same) == 1000
    assert {(b.package, b.source_path.endswith("libbz2.so.1.0.4")) for b in same} == {("libbz2-1.0", True)}
    fakes = [b for b in found if "libfake" in b.name]
    assert len(fakes) == MAX_TRACED + 10
    assert {(b.source_path, b.package) for b in fakes} == {("", "")}  # none exists; ten not even looked for
