"""``wheelfarm verify``: check the provenance of farm-built wheels.

What it checks, for each wheel: the attestation's signature against the farm's keys (fetched from
``/.well-known/wheelfarm/keys.json`` once, or pinned in a file for air-gapped sites), that a key retired by
rotation signed it before its retirement, that the statement's subject is this wheel (name and sha256), and,
online, that the sdist it was built from is still listed by the farm's upstream and not yanked.

What it reads: wheel files (the attestation beside them as ``<wheel>.dsse.json``, else asked from the farm by
the wheel's sha256), ``pip install --report`` JSON, ``uv.lock`` and ``pylock.toml`` (the wheels they name by
URL and sha256; those not served from the farm's ``built/`` are not the farm's and are skipped), and
installed environments (a ``site-packages`` folder or a virtual environment): installers copy a wheel's
METADATA unchanged, so its sha256 finds the farm's attestation (a distribution the farm did not build is
skipped); then the signed wheel is fetched, and every installed file its RECORD lists must still have the
hash the signed wheel gives it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import ssl
import tomllib
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from proxy.provenance.attest import KEYS_PATH, NotVerified, verified_statement
from proxy.provenance.keys import KnownKey
from proxy.provenance.statement import REPRODUCIBILITY, rfc3339, timestamp_of

ATTESTATIONS_PATH = "/.well-known/wheelfarm/attestations/"
MAX_DOCUMENT_BYTES = 16 << 20  # keys, envelopes, pages
MAX_WHEEL_BYTES = 2 << 30  # a signed wheel fetched to check an installed environment against


@dataclass(frozen=True)
class Wheel:
    """A wheel to check: its name and sha256, where it was found, its URL when a lock or report gave one."""

    filename: str
    sha256: str
    found_in: str
    url: str = ""
    local: Path | None = None


@dataclass(frozen=True)
class Verdict:
    wheel: Wheel
    ok: bool
    message: str
    skipped: bool = False
    statement: dict[str, Any] | None = None  # the verified statement, when the signature checked out


class Farm:
    """What verify asks of the farm over HTTP (the system trust store, as the proxy uses)."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._timeout = timeout
        self._context = ssl.create_default_context()

    def get(self, path: str, limit: int = MAX_DOCUMENT_BYTES) -> bytes | None:
        """The body at ``path`` below the farm (at most ``limit`` bytes); None for a 404."""
        try:
            with urllib.request.urlopen(
                self.url + path, timeout=self._timeout, context=self._context
            ) as answer:
                body: bytes = answer.read(limit + 1)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        if len(body) > limit:
            raise ValueError(f"{self.url + path} answered more than {limit} bytes")
        return body

    def keys(self) -> list[KnownKey]:
        body = self.get(KEYS_PATH)
        if body is None:
            raise ValueError(f"{self.url} publishes no signing keys ({KEYS_PATH}): it builds nothing")
        return parse_keys(body)

    def serves(self, url: str) -> bool:
        """Whether ``url`` is one of the farm's built artifacts."""
        farm, other = urlsplit(self.url), urlsplit(url)
        return (other.scheme, other.netloc) == (farm.scheme, farm.netloc) and "/built/" in other.path


def parse_keys(body: bytes) -> list[KnownKey]:
    data = json.loads(body)
    return [KnownKey.from_json(each) for each in data["keys"]]


def check(wheel: Wheel, envelope: bytes | None, keys: Sequence[KnownKey], farm: Farm | None) -> Verdict:
    if envelope is None:
        return Verdict(wheel, False, "no provenance: the farm has no attestation for this wheel")
    try:
        statement = verified_statement(envelope, [known.key for known in keys], wheel.filename, wheel.sha256)
        signer = _signing_key(envelope, keys)
        finished = str(statement["predicate"]["runDetails"]["metadata"]["finishedOn"])
        if signer.retired is not None and timestamp_of(finished) > signer.retired:
            raise NotVerified(
                f"signed by key {signer.key.keyid[:16]} after it was retired (rotated away) at "
                f"{rfc3339(signer.retired)}"
            )
        sdist = statement["predicate"]["buildDefinition"]["externalParameters"]["sdist"]
        builder = statement["predicate"]["runDetails"]["builder"]["id"]
        listed = _sdist_listed(farm, wheel.filename, sdist) if farm is not None else "not checked (offline)"
    except NotVerified as exc:
        return Verdict(wheel, False, str(exc))
    except (KeyError, TypeError, ValueError) as exc:
        return Verdict(wheel, False, f"the attestation's statement is malformed: {exc}")
    if listed.startswith("FAIL "):
        return Verdict(wheel, False, listed[5:])
    source = f"{sdist['name']} (sha256 {sdist['digest']['sha256'][:16]})"
    message = (
        f"signed by {signer.key.keyid[:16]}; built from {source} by {builder}; sdist upstream: {listed}; "
        + reproduction(statement)
    )
    return Verdict(wheel, True, message, statement=statement)


def farm_reproduced(statement: dict[str, Any]) -> bool:
    """Whether the signed statement says the farm's second build made the same bytes."""
    verdict = statement["predicate"]["runDetails"].get("metadata", {}).get(REPRODUCIBILITY)
    return isinstance(verdict, dict) and verdict.get("reproduced") is True


def reproduction(statement: dict[str, Any]) -> str:
    """The farm's reproducibility verdict in the signed statement, in words (and whether the second build
    was independent: another builder than the one that made the wheel)."""
    details = statement["predicate"]["runDetails"]
    verdict = details.get("metadata", {}).get(REPRODUCIBILITY)
    if not isinstance(verdict, dict):
        return "the farm's second build: not made yet"
    second = str(verdict.get("second_builder") or "the same builder")
    same = " (the builder that made it)" if second == details["builder"]["id"] else ""
    if verdict.get("reproduced") is True:
        return f"reproduced by {second}{same}"
    differing = ", ".join(str(name) for name in verdict.get("differing") or [])
    why = "; ".join(part for part in (differing, str(verdict.get("note") or "")) if part)
    return f"NOT reproduced by {second}{same}: {why or 'other bytes'}"


def _signing_key(envelope: bytes, keys: Sequence[KnownKey]) -> KnownKey:
    signed_by = {each["keyid"] for each in json.loads(envelope)["signatures"]}
    return next(known for known in keys if known.key.keyid in signed_by)


def _sdist_listed(farm: Farm, wheel_filename: str, sdist: dict[str, Any]) -> str:
    """Whether the farm's upstream still lists the sdist, unyanked (PEP 592), by its plain page."""
    project = parse_wheel_filename(wheel_filename)[0]
    body = farm.get(f"/plain/simple/{quote(project)}/?format=json")
    if body is None:
        return f"FAIL the project {project} is no longer listed upstream"
    page = json.loads(body)
    sha = sdist["digest"]["sha256"]
    for entry in page.get("files", []):
        if entry.get("hashes", {}).get("sha256") == sha:
            yanked = entry.get("yanked")
            if yanked:
                reason = f": {yanked}" if isinstance(yanked, str) else ""
                return f"FAIL the sdist {sdist['name']} it was built from is yanked upstream{reason}"
            return "listed, not yanked"
    return f"FAIL the sdist {sdist['name']} it was built from is no longer listed upstream"


def wheels_in(path: Path) -> Iterator[Wheel]:
    """The wheels ``path`` names: a wheel file, a pip report, a uv.lock or a pylock.toml."""
    name = path.name
    if name.endswith(".whl"):
        yield Wheel(name, hashlib.sha256(path.read_bytes()).hexdigest(), str(path), local=path)
    elif name == "uv.lock":
        lock = tomllib.loads(path.read_text())
        for package in lock.get("package", []):
            for wheel in package.get("wheels", []):
                yield from _locked(wheel.get("url", ""), wheel.get("hash", ""), str(path))
    elif name.startswith("pylock.") and name.endswith(".toml"):
        lock = tomllib.loads(path.read_text())
        for package in lock.get("packages", []):
            for wheel in package.get("wheels", []):
                sha = (wheel.get("hashes") or {}).get("sha256", "")
                yield from _locked(wheel.get("url", ""), f"sha256:{sha}" if sha else "", str(path))
    elif name.endswith(".json"):
        report = json.loads(path.read_text())
        for item in report.get("install", []):
            info = item.get("download_info") or {}
            hashes = (info.get("archive_info") or {}).get("hashes") or {}
            sha = hashes.get("sha256", "")
            yield from _locked(info.get("url", ""), f"sha256:{sha}" if sha else "", str(path))
    else:
        raise ValueError(f"{path}: not a wheel, a pip report (.json), uv.lock or pylock.*.toml")


def _locked(url: str, hash_text: str, found_in: str) -> Iterator[Wheel]:
    filename = urlsplit(url).path.rsplit("/", 1)[-1]
    algorithm, _, sha = hash_text.partition(":")
    if not filename.endswith(".whl"):
        return
    try:
        parse_wheel_filename(urllib.request.url2pathname(filename))
    except InvalidWheelFilename:
        return
    yield Wheel(
        urllib.request.url2pathname(filename), sha if algorithm == "sha256" else "", found_in, url=url
    )


def envelope_for(wheel: Wheel, farm: Farm | None) -> bytes | None:
    """The attestation of ``wheel``: beside the file (``<wheel>.dsse.json``), else the farm's by sha256."""
    if wheel.local is not None:
        beside = wheel.local.with_name(wheel.local.name + ".dsse.json")
        if beside.is_file():
            return beside.read_bytes()
    if farm is None:
        return None
    return farm.get(ATTESTATIONS_PATH + wheel.sha256)


@dataclass(frozen=True)
class Installed:
    """A distribution installed in ``site``: its dist-info folder and the sha256 of its METADATA."""

    name: str
    site: Path
    dist_info: Path
    metadata_sha256: str


def installed_in(path: Path) -> list[Installed]:
    """The distributions of an environment: ``path`` is a site-packages folder or a virtual environment."""
    sites = [path] if any(path.glob("*.dist-info")) else sorted(path.glob("lib/python3*/site-packages"))
    if not sites:
        raise ValueError(f"{path}: neither a site-packages folder nor a virtual environment")
    found = []
    for site in sites:
        for dist_info in sorted(site.glob("*.dist-info")):
            metadata = dist_info / "METADATA"
            if metadata.is_file():
                digest = hashlib.sha256(metadata.read_bytes()).hexdigest()
                found.append(Installed(dist_info.name.removesuffix(".dist-info"), site, dist_info, digest))
    return found


def check_installed(dist: Installed, farm: Farm, keys: Sequence[KnownKey]) -> Verdict | None:
    """None: the farm built no wheel with this METADATA (not the farm's to vouch for)."""
    envelope = farm.get(ATTESTATIONS_PATH + dist.metadata_sha256 + "?of=metadata")
    if envelope is None:
        return None
    data = json.loads(envelope)
    statement_bytes = base64.b64decode(data["payload"])
    subject = json.loads(statement_bytes)["subject"][0]
    wheel = Wheel(str(subject["name"]), str(subject["digest"]["sha256"]), str(dist.site))
    verdict = check(wheel, envelope, keys, farm)
    if not verdict.ok or verdict.statement is None:
        return verdict
    body = signed_wheel(wheel, verdict.statement, farm)
    if body is None:
        return Verdict(wheel, False, f"the farm no longer serves the signed wheel {wheel.filename}")
    changed = _changed_files(dist.site, body)
    if changed:
        named = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        return Verdict(wheel, False, f"installed in {dist.site}, but changed since: {named}")
    message = f"installed in {dist.site}, every file as signed; {verdict.message}"
    return Verdict(wheel, True, message, statement=verdict.statement)


def signed_wheel(wheel: Wheel, statement: dict[str, Any], farm: Farm) -> bytes | None:
    """The bytes of the wheel ``statement`` (verified) is about, from the farm's ``built/``; None when
    the farm no longer serves them (or serves other bytes)."""
    external = statement["predicate"]["buildDefinition"]["externalParameters"]
    sdist, target = external["sdist"]["digest"]["sha256"], external["target"]
    body = farm.get(f"/built/{sdist}/{target}/{wheel.sha256}/{quote(wheel.filename)}", MAX_WHEEL_BYTES)
    if body is None or hashlib.sha256(body).hexdigest() != wheel.sha256:
        return None
    return body


def _changed_files(site: Path, wheel: bytes) -> list[str]:
    """The files of the signed wheel (its RECORD) whose installed copy under ``site`` differs or is gone."""
    changed = []
    with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
        record = next(n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/RECORD"))
        for row in archive.read(record).decode().splitlines():
            name, _, rest = row.partition(",")
            hash_text = rest.partition(",")[0]
            parts = name.split("/")
            moved = parts[0].endswith(".data")  # scripts, headers, data: installers put them elsewhere
            if not hash_text.startswith("sha256=") or moved or ".." in parts or not parts[0]:
                continue  # and RECORD itself (no hash), and odd paths
            installed = site / name
            if not installed.is_file():
                changed.append(name)
                continue
            actual = base64.urlsafe_b64encode(hashlib.sha256(installed.read_bytes()).digest()).rstrip(b"=")
            if actual.decode() != hash_text.removeprefix("sha256="):
                changed.append(name)
    return changed
