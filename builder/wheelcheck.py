"""Inspect a built wheel before it is kept: is it exactly the wheel it says it is, and nothing more?

A backend is the sdist author's code, so its wheel is checked as hostile input (PEP 427 and the binary
distribution format spec): the file name parses and names the sdist's project and version; the tags are
ones the target runs; it is a valid zip whose members have unique, relative, clean names (no '..', no
absolute or drive paths, no backslashes, no NUL) and are regular files or folders (no links, devices or
FIFOs) without setuid, setgid or sticky bits; it has at most ``wheel_members`` members and the bytes they
inflate to are counted as they are inflated (a header that lies cannot hide a zip bomb); exactly one
``NAME-VERSION.dist-info`` folder with METADATA (at most ``metadata_bytes``, naming the same project and
version), WHEEL (Wheel-Version 1.x, the same tags as the file name) and RECORD, which lists every other
member exactly once with its right sha256 and size. The wheel is read from the worker's own copy, so what
was inspected is what is kept.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import stat
import struct
import zipfile
from dataclasses import dataclass, field
from email.parser import BytesParser
from pathlib import Path, PurePosixPath

from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag
from packaging.utils import (
    InvalidWheelFilename,
    canonicalize_name,
    canonicalize_version,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from builder.jobs import Limits
from builder.tags import Target

_CHUNK = 1 << 20
_EXTENSION_SUFFIX = ".so"
_RECORD_SIGNATURES = ("RECORD.jws", "RECORD.p7s")
# What the worker reads whole (everything else is only hashed as it inflates): bounded so that a small wheel
# whose RECORD inflates to gigabytes cannot take the worker's memory.
_RECORD_BYTES = 64 << 20
_WHEEL_FILE_BYTES = 64 << 10
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # PKZIP APPNOTE 4.3.7
_LOCAL_SIGNATURE = b"PK\x03\x04"


class BadWheel(ValueError):
    """The wheel is not acceptable; the message names the member or field and what is wrong."""


@dataclass(frozen=True, slots=True)
class Inspection:
    metadata: bytes
    tags: frozenset[Tag]
    modules: tuple[str, ...]  # top-level modules to import
    own: tuple[str, ...]  # every top-level name the wheel installs
    extensions: tuple[str, ...]  # extension modules, relative to site-packages
    has_dependencies: bool
    members: int
    inflated_bytes: int
    purelib: bool = field(default=True)


def inspect_wheel(path: Path, *, project: str, version: str, target: Target, limits: Limits) -> Inspection:
    name, wheel_version, _, tags = _parse_name(path.name)
    if canonicalize_name(name) != canonicalize_name(project):
        raise BadWheel(f"the wheel is for project {name!r}, the sdist for {project!r}")
    try:
        expected = Version(version)
    except InvalidVersion:
        expected = None
    if expected is not None and wheel_version != expected:
        raise BadWheel(f"the wheel has version {wheel_version}, the sdist {version}")
    if not target.supports(frozenset(tags)):
        shown = ", ".join(sorted(str(t) for t in tags))
        raise BadWheel(f"the wheel's tags ({shown}) do not run on {target}")
    size = path.stat().st_size
    if size > limits.output_bytes:
        raise BadWheel(f"the wheel has {size} bytes, more than the limit of {limits.output_bytes}")
    try:
        with zipfile.ZipFile(path) as archive:
            _check_layout(path, archive)
            return _inspect_members(archive, name, wheel_version, frozenset(tags), limits)
    except zipfile.BadZipFile as exc:
        raise BadWheel(f"the wheel is not a valid zip file: {exc}") from None
    except (OSError, EOFError, RuntimeError, NotImplementedError) as exc:  # e.g. an unknown compression
        raise BadWheel(f"the wheel cannot be read: {exc}") from None


def _parse_name(filename: str) -> tuple[str, Version, object, frozenset[Tag]]:
    try:
        name, version, build, tags = parse_wheel_filename(filename)
    except (InvalidWheelFilename, InvalidVersion) as exc:
        raise BadWheel(f"the backend made a file that is not a wheel: {exc}") from None
    return str(name), version, build, tags


def _inspect_members(
    archive: zipfile.ZipFile, name: str, version: Version, tags: frozenset[Tag], limits: Limits
) -> Inspection:
    infos = archive.infolist()
    if len(infos) > limits.wheel_members:
        raise BadWheel(f"the wheel has {len(infos)} members, more than the limit of {limits.wheel_members}")
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise BadWheel(f"the wheel has the member {duplicate!r} twice")
    for info in infos:
        _check_member(info)
    dist_info = _dist_info(names, name, version)
    digests: dict[str, tuple[str, int]] = {}
    inflated = 0
    metadata = b""
    read_whole = {
        f"{dist_info}/METADATA": limits.metadata_bytes,
        f"{dist_info}/WHEEL": _WHEEL_FILE_BYTES,
        f"{dist_info}/RECORD": _RECORD_BYTES,
    }
    for info in infos:
        if info.is_dir():
            continue
        cap = read_whole.get(info.filename, limits.output_bytes)
        data_hash, length = inflated_digest(archive, info, min(cap, limits.output_bytes - inflated))
        inflated += length
        digests[info.filename] = (data_hash, length)
        if info.filename == f"{dist_info}/METADATA":
            metadata = archive.read(info)  # its inflated size was just counted against the cap
    _check_metadata(metadata, name, version)
    purelib = _check_wheel_file(archive.read(f"{dist_info}/WHEEL"), tags)
    _check_record(archive.read(f"{dist_info}/RECORD"), dist_info, digests)
    modules, own, extensions = _modules(names, dist_info)
    return Inspection(
        metadata=metadata,
        tags=tags,
        modules=modules,
        own=own,
        extensions=extensions,
        has_dependencies=_has_dependencies(metadata),
        members=len(infos),
        inflated_bytes=inflated,
        purelib=purelib,
    )


def _check_member(info: zipfile.ZipInfo) -> None:
    raw = info.filename
    shown = repr(raw[:200])
    if "\x00" in raw or "\\" in raw:
        raise BadWheel(f"the wheel member {shown} has a NUL or a backslash in its name")
    path = PurePosixPath(raw)
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise BadWheel(f"the wheel member {shown} has an absolute path")
    if any(part in ("..", ".") for part in raw.rstrip("/").split("/")) or "//" in raw:
        raise BadWheel(f"the wheel member {shown} is not a clean relative path")
    if not path.parts:
        raise BadWheel(f"the wheel member {shown} has no name")
    # Unix mode bits, whatever system the zip claims to come from: Info-ZIP's unzip applies them from any.
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        what = "a symbolic link" if kind == stat.S_IFLNK else "a device, FIFO or socket"
        raise BadWheel(f"the wheel member {shown} is {what}")
    if mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX):
        raise BadWheel(
            f"the wheel member {shown} has the setuid, setgid or sticky bit ({oct(mode & 0o7777)})"
        )


def _check_layout(path: Path, archive: zipfile.ZipFile) -> None:
    """Every byte before the central directory belongs to a member it lists, in order, from offset 0: no
    data that a tool reading local headers (as some installers do) would see and we would not."""
    expected = 0
    with path.open("rb") as raw:
        for info in sorted(archive.infolist(), key=lambda member: member.header_offset):
            if info.header_offset != expected:
                raise BadWheel(f"the wheel has bytes no member accounts for before {info.filename!r}")
            raw.seek(info.header_offset)
            header = raw.read(_LOCAL_HEADER.size)
            if len(header) != _LOCAL_HEADER.size or header[:4] != _LOCAL_SIGNATURE:
                raise BadWheel(f"the wheel's member {info.filename!r} has no local header")
            fields = _LOCAL_HEADER.unpack(header)
            name_length, extra_length = fields[9], fields[10]
            expected = (
                info.header_offset + _LOCAL_HEADER.size + name_length + extra_length + info.compress_size
            )
            if info.flag_bits & 0x08:  # a data descriptor follows the data, with or without its signature
                raw.seek(expected)
                signed = raw.read(4) == b"PK\x07\x08"
                sizes = (
                    16 if max(info.compress_size, info.file_size) >= 0xFFFFFFFF else 8
                )  # ZIP64: 8-byte sizes
                expected += (4 if signed else 0) + 4 + sizes
    if expected != archive.start_dir:
        raise BadWheel("the wheel has bytes no member accounts for before its central directory")


def _dist_info(names: list[str], name: str, version: Version) -> str:
    folders = sorted({n.split("/", 1)[0] for n in names if n.split("/", 1)[0].endswith(".dist-info")})
    if len(folders) != 1:
        raise BadWheel(f"the wheel has {len(folders)} .dist-info folders, not exactly one: {folders[:5]}")
    folder = folders[0]
    stem = folder.removesuffix(".dist-info")
    folder_name, _, folder_version = stem.rpartition("-")
    if canonicalize_name(folder_name) != canonicalize_name(name) or _other_version(folder_version, version):
        raise BadWheel(f"the wheel's {folder} does not match its file name ({name} {version})")
    for required in ("METADATA", "WHEEL", "RECORD"):
        if f"{folder}/{required}" not in names:
            raise BadWheel(f"the wheel has no {folder}/{required}")
    return folder


def _other_version(text: str, version: Version) -> bool:
    """``text`` is not a spelling of ``version``."""
    try:
        return canonicalize_version(Version(text)) != canonicalize_version(version)
    except InvalidVersion:
        return True


def inflated_digest(archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> tuple[str, int]:
    """sha256 (as RECORD spells it) and length of a member, counted while inflating (the header's file_size
    is not trusted); BadWheel past ``cap`` bytes. Nothing of the member is held whole."""
    digest = hashlib.sha256()
    length = 0
    with archive.open(info) as member:
        while chunk := member.read(_CHUNK):
            length += len(chunk)
            if length > cap:
                raise BadWheel(f"the wheel member {info.filename!r} inflates past the limit of {cap} bytes")
            digest.update(chunk)
    encoded = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    return encoded, length


def _check_metadata(metadata: bytes, name: str, version: Version) -> None:
    message = BytesParser().parsebytes(metadata, headersonly=True)
    meta_name, meta_version = message.get("Name"), message.get("Version")
    if not meta_name or canonicalize_name(str(meta_name)) != canonicalize_name(name):
        raise BadWheel(f"the wheel's METADATA names the project {meta_name!r}, not {name!r}")
    if not meta_version or _other_version(str(meta_version), version):
        raise BadWheel(f"the wheel's METADATA has version {meta_version!r}, not {version}")


def _check_wheel_file(raw: bytes, tags: frozenset[Tag]) -> bool:
    message = BytesParser().parsebytes(raw, headersonly=True)
    wheel_version = str(message.get("Wheel-Version", ""))
    if not wheel_version.startswith("1."):
        raise BadWheel(f"the wheel's WHEEL file has Wheel-Version {wheel_version!r}, not 1.x")
    declared: set[Tag] = set()
    for line in message.get_all("Tag") or []:
        interpreter, abi, platform = [*str(line).strip().split("-"), "", "", ""][:3]
        declared.add(Tag(interpreter, abi, platform))
    if declared != set(tags):
        shown = ", ".join(sorted(str(t) for t in declared)) or "none"
        raise BadWheel(f"the wheel's WHEEL file lists the tags {shown}, its file name others")
    return str(message.get("Root-Is-Purelib", "true")).strip().lower() == "true"


def _check_record(raw: bytes, dist_info: str, digests: dict[str, tuple[str, int]]) -> None:
    record_name = f"{dist_info}/RECORD"
    listed: set[str] = set()
    try:
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8"))))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BadWheel(f"the wheel's RECORD cannot be read: {exc}") from None
    for row in rows:
        if not row:
            continue
        if len(row) != 3:
            raise BadWheel(f"the wheel's RECORD has a row of {len(row)} fields: {row[:3]}")
        path, hash_field, size_field = row
        if path in listed:
            raise BadWheel(f"the wheel's RECORD lists {path!r} twice")
        listed.add(path)
        if path == record_name or path in (f"{dist_info}/{s}" for s in _RECORD_SIGNATURES):
            continue
        if path not in digests:
            raise BadWheel(f"the wheel's RECORD lists {path!r}, which the wheel does not hold")
        expected, length = digests[path]
        algorithm, _, value = hash_field.partition("=")
        if algorithm != "sha256" or value != expected:
            raise BadWheel(f"the wheel's RECORD has the wrong hash for {path!r}")
        if size_field != str(length):
            raise BadWheel(f"the wheel's RECORD has the wrong size for {path!r}")
    unlisted = sorted(set(digests) - listed - {f"{dist_info}/{s}" for s in _RECORD_SIGNATURES})
    if unlisted:
        raise BadWheel(f"the wheel's RECORD does not list {unlisted[0]!r}")


def _modules(names: list[str], dist_info: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Top-level importable names, every top-level name, and extension modules (site-packages paths)."""
    data = dist_info.removesuffix(".dist-info") + ".data"
    installed: list[str] = []
    for member in names:
        if member.endswith("/") or member.startswith(dist_info + "/"):
            continue
        if member.startswith(data + "/"):
            scheme, _, rest = member[len(data) + 1 :].partition("/")
            if scheme in ("purelib", "platlib") and rest:
                installed.append(rest)
            continue
        installed.append(member)
    own: set[str] = set()
    modules: set[str] = set()
    extensions: list[str] = []
    for member in installed:
        top = member.split("/", 1)[0]
        module = top.split(".", 1)[0]
        own.add(module)
        is_source = "/" not in member and top.endswith(".py")
        is_extension = member.endswith(_EXTENSION_SUFFIX)
        if is_extension:
            extensions.append(member)
        if module.isidentifier() and ("/" in member or is_source or is_extension):
            modules.add(module)
    return tuple(sorted(modules)), tuple(sorted(own)), tuple(sorted(extensions))


def _has_dependencies(metadata: bytes) -> bool:
    """Does the wheel require anything outside extras? (Then a failed import may be a missing one.)"""
    message = BytesParser().parsebytes(metadata, headersonly=True)
    for line in message.get_all("Requires-Dist") or []:
        try:
            requirement = Requirement(str(line))
        except InvalidRequirement:
            return True
        if requirement.marker is None or "extra" not in str(requirement.marker):
            return True
    return False
