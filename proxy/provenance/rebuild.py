"""``wheelfarm verify --rebuild``: build a farm-built wheel again on this host and compare the bytes.

Everything the rebuild takes comes from the *verified* statement: the sdist (its name and sha256), the target,
and the versions of the build requirements the farm installed (its resolved dependencies), which pin this
build's resolution (uv's ``--constraint``) against the farm's plain index, the one the farm's builds use. The
build is ``wheelfarm builder build``'s (builder/local.py: the same sandbox and steps as the farm's workers).

The sdist is fetched from the farm the user named (its ``/files/`` route, by the signed sha256), never from
the URL in the statement: that one is recorded, and this machine contacts no host a statement names. The
download is capped in size and time, follows redirects to http(s) only, and its sha256 is checked before
the file is used.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from packaging.tags import platform_tags
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)

from builder.interpreters import find_interpreter
from builder.jobs import Limits, is_sha256
from builder.local import DEFAULT_BUILD_UID, build_here
from builder.reproduce import compare_wheels
from builder.tags import InvalidTarget, Target
from proxy.provenance.verify import Farm, Verdict, signed_wheel

MAX_SDIST_BYTES = 1 << 30
_CHUNK = 1 << 20


class Outcome(enum.Enum):
    IDENTICAL = "identical"  # the same bytes as the signed wheel
    DIFFERS = "differs"  # built, other bytes
    FAILED = "failed"  # no wheel to compare: the sdist, the host or the build failed


@dataclass(frozen=True)
class Rebuilt:
    outcome: Outcome
    message: str  # for the verdict's line: "rebuilt: identical", "rebuild failed in build: ..."


class _NotRebuilt(Exception):
    """Why there is no rebuilt wheel, as the verdict says it."""


@dataclass(frozen=True)
class Recipe:
    """What the verified statement says was built, and with what."""

    sdist_filename: str
    sdist_url: str
    sdist_sha256: str
    target: Target
    pins: tuple[str, ...]  # name==version of each build requirement the farm installed


def recipe_of(statement: Mapping[str, Any]) -> Recipe:
    """The recipe of a verified statement (statement.py's shape); ValueError naming what is unusable."""
    definition = statement["predicate"]["buildDefinition"]
    external = definition["externalParameters"]
    sdist = external["sdist"]
    filename, url, sha256 = str(sdist["name"]), str(sdist.get("uri", "")), str(sdist["digest"]["sha256"])
    try:
        parse_sdist_filename(filename)
        target = Target.parse(str(external["target"]))
    except (InvalidSdistFilename, InvalidTarget) as exc:
        raise ValueError(f"the statement names {exc}") from None
    if "/" in filename or "\\" in filename or filename.startswith("."):
        raise ValueError(f"the statement's sdist name {filename!r} is not a file name")
    if not is_sha256(sha256):
        raise ValueError(f"the statement's sdist sha256 {sha256!r} is not one")
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"the statement's sdist URL {url!r} is not http(s): nothing to download")
    pins = []
    for dependency in definition.get("resolvedDependencies", []):
        name = str(dependency.get("name", ""))
        if not name.endswith(".whl"):
            continue  # the sdist, the interpreter
        try:
            project, version, _, _ = parse_wheel_filename(name)
        except InvalidWheelFilename:
            raise ValueError(f"the statement lists {name!r} as a build requirement: not a wheel") from None
        pins.append(f"{project}=={version}")
    return Recipe(filename, url, sha256, target, tuple(sorted(pins)))


def rebuilt_verdict(verdict: Verdict, farm: Farm, *, build_uid: int = DEFAULT_BUILD_UID) -> Verdict:
    """``verdict`` with the rebuild's outcome added: a passed check (the statement verified) whose wheel
    is a file here or still served by the farm is built again and must come out identical."""
    statement = verdict.statement
    if not verdict.ok or statement is None:
        return verdict  # nothing verified to rebuild from: the verdict already fails
    with tempfile.TemporaryDirectory(prefix="wheelfarm-signed-") as folder:
        signed = verdict.wheel.local
        if signed is None:
            try:
                body = signed_wheel(verdict.wheel, statement, farm)
            except (OSError, ValueError, KeyError, urllib.error.URLError) as exc:
                body, why = None, f"cannot fetch the signed wheel: {exc}"
            else:
                why = "the farm no longer serves the signed wheel"
            if body is None:
                return dataclasses.replace(
                    verdict, ok=False, message=f"{verdict.message}; cannot rebuild: {why}"
                )
            signed = Path(folder) / "signed.whl"  # not the name a lock or statement gave: no path from it
            signed.write_bytes(body)
        rebuilt = rebuild(signed, statement, farm.url, build_uid=build_uid)
    return dataclasses.replace(
        verdict, ok=rebuilt.outcome is Outcome.IDENTICAL, message=f"{verdict.message}; {rebuilt.message}"
    )


def rebuild(
    signed: Path,
    statement: Mapping[str, Any],
    farm_url: str,
    *,
    limits: Limits | None = None,
    build_uid: int = DEFAULT_BUILD_UID,
) -> Rebuilt:
    """Build the sdist of ``statement`` (verified, about the wheel file ``signed``) here and compare."""
    scratch = Path(tempfile.mkdtemp(prefix="wheelfarm-rebuild-"))
    try:
        # As the pool's work root: the build uid may pass through to its own (0700) folders, no further.
        os.chmod(scratch, 0o711)
        return _rebuild(signed, statement, farm_url, scratch, limits or Limits(), build_uid)
    except _NotRebuilt as exc:
        return Rebuilt(Outcome.FAILED, str(exc))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _rebuild(
    signed: Path, statement: Mapping[str, Any], farm_url: str, scratch: Path, limits: Limits, build_uid: int
) -> Rebuilt:
    try:
        recipe = recipe_of(statement)
    except (KeyError, TypeError, ValueError) as exc:
        raise _NotRebuilt(f"cannot rebuild: {exc}") from None
    interpreter = _interpreter_for(recipe.target)
    sdist = scratch / recipe.sdist_filename
    # From the farm the user named, not from the statement's URL: the farm fetched it from its upstream
    # (and checks the sha256 the page gave), and this machine contacts no host a statement names.
    project = canonicalize_name(parse_sdist_filename(recipe.sdist_filename)[0])
    from_farm = f"{farm_url.rstrip('/')}/files/{project}/{recipe.sdist_sha256}/{quote(recipe.sdist_filename)}"
    download_sdist(from_farm, recipe.sdist_sha256, sdist, timeout=limits.timeout_seconds)
    with build_here(
        sdist,
        target=recipe.target,
        interpreter=interpreter,
        index_url=farm_url.rstrip("/") + "/plain/simple/",
        work_root=scratch / "work",
        limits=limits,
        build_uid=build_uid,
        sdist_url=recipe.sdist_url,
        constraints=recipe.pins,
    ) as build:
        if not build.report.ok:
            raise _NotRebuilt(f"rebuild failed in {build.report.phase}: {build.report.error}")
        verdict = compare_wheels(signed, build.wheel)
        other_requirements = _not_as_signed(statement, build.report.provenance)
    # The pins are versions: a requirement wheel with other bytes under the same version (or another wheel
    # of it) is named, since it may be why the bytes differ.
    unlike = (
        f"; build requirements not as signed: {', '.join(other_requirements)}" if other_requirements else ""
    )
    if verdict.reproduced:
        return Rebuilt(Outcome.IDENTICAL, f"rebuilt: identical{unlike}")
    differing = ", ".join(verdict.differing)
    note = "; ".join(part for part in (differing, verdict.note) if part)
    return Rebuilt(
        Outcome.DIFFERS,
        (f"rebuilt: differs in {note}" if differing else f"rebuilt: differs: {note}") + unlike,
    )


def _not_as_signed(statement: Mapping[str, Any], facts: Mapping[str, Any]) -> list[str]:
    """The build-requirement wheels this rebuild installed that the statement does not list with the same
    sha256, and those it lists that the rebuild did not install."""
    signed = {
        str(each.get("name", "")): str(each.get("digest", {}).get("sha256", ""))
        for each in statement["predicate"]["buildDefinition"].get("resolvedDependencies", [])
        if str(each.get("name", "")).endswith(".whl")
    }
    build_system = facts.get("build_system") or {}
    here = {
        str(each.get("filename", "")): str(each.get("sha256", ""))
        for each in build_system.get("installed", [])
    }
    return sorted(name for name in signed.keys() | here.keys() if signed.get(name) != here.get(name))


def _interpreter_for(target: Target) -> Path:
    """This host's interpreter for ``target``; _NotRebuilt naming why this host cannot build it."""
    host = list(platform_tags())
    if target.platform not in host:
        shown = host[0] if host else "none"
        raise _NotRebuilt(f"cannot rebuild here: {target.platform} is not a platform of this host ({shown})")
    found = find_interpreter(target.python_version)
    if found is None:
        raise _NotRebuilt(f"cannot rebuild here: no Python {target.python_version} on this host")
    return found


def download_sdist(url: str, sha256: str, path: Path, *, timeout: float) -> None:
    """Fetch ``url`` to ``path`` (at most MAX_SDIST_BYTES), only if its bytes have ``sha256``."""
    partial = path.with_name(f".{path.name}.partial")
    digest = hashlib.sha256()
    length = 0
    opener = urllib.request.build_opener(_HttpRedirectsOnly)
    deadline = time.monotonic() + timeout  # the whole download, not each read: a trickle ends too
    try:
        with opener.open(url, timeout=min(timeout, 60.0)) as answer, partial.open("wb") as out:
            while chunk := answer.read1(_CHUNK):  # what has arrived: the deadline is checked as it trickles
                if time.monotonic() > deadline:
                    raise _NotRebuilt(f"the sdist {path.name} took more than {timeout:.0f} s to download")
                length += len(chunk)
                if length > MAX_SDIST_BYTES:
                    raise _NotRebuilt(f"the sdist {path.name} is larger than {MAX_SDIST_BYTES} bytes")
                digest.update(chunk)
                out.write(chunk)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        partial.unlink(missing_ok=True)
        raise _NotRebuilt(f"cannot download the sdist {path.name} from {url}: {exc}") from None
    except _NotRebuilt:
        partial.unlink(missing_ok=True)
        raise
    if digest.hexdigest() != sha256:
        partial.unlink(missing_ok=True)
        raise _NotRebuilt(
            f"the sdist {path.name} at {url} has sha256 {digest.hexdigest()}, not the signed {sha256}"
        )
    os.replace(partial, path)


class _HttpRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """Redirects are followed to http(s) only (urllib's own handler would follow one to ftp too)."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        if urlsplit(newurl).scheme not in ("http", "https"):
            raise urllib.error.URLError(f"redirected to {newurl!r}, not http(s)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)
