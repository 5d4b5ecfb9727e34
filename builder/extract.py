"""Safe sdist extraction: no absolute paths, no '..', no links or devices pointing anywhere, size caps.

It runs INSIDE the build's sandbox (``python -I -S extract.py SDIST DEST LIMITS_JSON``, standard library
only), so even a way around every check below could only write into the build's own tree; the host never
parses the archive. It also reads the project's ``[build-system]`` table (PEP 517/518) and the newest
timestamp in the archive (the build's SOURCE_DATE_EPOCH), and answers with one JSON object on the
descriptor ``$WHEELFARM_RESULT_FD``: {"project": folder name, "epoch": int, "build_system": table or
null} or {"error": message}.

Links are allowed only in the one shape that cannot escape whatever else the archive holds: a symbolic
link to a relative path with no '..' whose target does not pass through another link, and no member may
be reached through a link; a hard link must name a regular file member. We check every member before
writing anything, so the build log says exactly which member was refused, and keep tarfile's "data" filter
(PEP 706) where this Python has it (3.11.4 on): it is not enough alone, since before Python 3.11.13 its
check can be outrun by link chains longer than PATH_MAX (CVE-2025-4517). Where it is missing, members are
extracted with their modes cut to rwxr-xr-x (no setuid, setgid or sticky bits) and no owner change.
"""

from __future__ import annotations

import json
import os
import posixpath
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

ZIP_EPOCH = 315532800  # 1980-01-01: the earliest time a wheel (zip) can record


class UnsafeArchive(ValueError):
    """The sdist is malformed or tries to escape its folder; the message names the member."""


@dataclass(frozen=True, slots=True)
class ExtractLimits:
    max_members: int = 50_000
    max_total_bytes: int = 2 << 30
    max_member_bytes: int = 1 << 30


def extract_sdist(archive: Path, destination: Path, limits: ExtractLimits = ExtractLimits()) -> Path:
    """Extract ``archive`` into ``destination`` and return the project folder (the single top-level one)."""
    name = archive.name.lower()
    if name.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar")):
        target = destination / _flat_folder(archive.name, _tar_names(archive))
        _extract_tar(archive, target, limits)
    elif name.endswith(".zip"):
        target = destination / _flat_folder(archive.name, _zip_names(archive))
        _extract_zip(archive, target, limits)
    else:
        raise UnsafeArchive(f"{archive.name}: not an sdist archive (.tar.gz or .zip)")
    entries = [entry for entry in destination.iterdir() if entry.name not in ("pax_global_header",)]
    if len(entries) != 1 or not entries[0].is_dir():
        raise UnsafeArchive(f"{archive.name}: an sdist holds exactly one top-level folder")
    project = entries[0]
    if not (project / "pyproject.toml").is_file() and not (project / "setup.py").is_file():
        raise UnsafeArchive(f"{archive.name}: no pyproject.toml or setup.py in {project.name}/")
    return project


def _flat_folder(archive: str, names: list[str]) -> str:
    """Where the members go: "" when they share one top-level folder (the layout the sdist spec asks
    for), else a folder named after the archive. Old maturin and some hand-made sdists put the project
    at the archive's root; pip unpacks those as they are (its ``has_leading_dir``), so we do too."""
    tops = {PurePosixPath(posixpath.normpath(n)).parts[:1] for n in names if posixpath.normpath(n) != "."}
    tops.discard(("pax_global_header",))
    nested = {parts[0] for parts in tops if parts} if tops else set()
    if len(nested) == 1 and any(len(PurePosixPath(posixpath.normpath(n)).parts) > 1 for n in names):
        return ""
    stem = archive
    for suffix in (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return stem.strip(".") or "sdist"


def _tar_names(archive: Path) -> list[str]:
    try:
        with tarfile.open(archive) as tar:
            return tar.getnames()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UnsafeArchive(f"{archive.name}: cannot extract: {exc}") from None


def _zip_names(archive: Path) -> list[str]:
    try:
        with zipfile.ZipFile(archive) as zipped:
            return zipped.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsafeArchive(f"{archive.name}: cannot extract: {exc}") from None


def _check_name(archive: str, name: str) -> None:
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(f"{archive}: member {name!r} has an absolute path")
    if ".." in path.parts:
        raise UnsafeArchive(f"{archive}: member {name!r} climbs out with '..'")
    if "\x00" in name:
        raise UnsafeArchive(f"{archive}: member name contains NUL")


def _extract_tar(archive: Path, destination: Path, limits: ExtractLimits) -> None:
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            _check_counts(archive.name, len(members), [m.size for m in members if m.isfile()], limits)
            links = {posixpath.normpath(m.name) for m in members if m.issym()}
            files: set[str] = set()
            for member in members:
                _check_name(archive.name, member.name)
                _check_not_through_link(archive.name, member.name, links)
                if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
                    raise UnsafeArchive(f"{archive.name}: member {member.name!r} is a device or special file")
                if member.issym():
                    _check_symlink(archive.name, member, links)
                elif member.islnk() and posixpath.normpath(member.linkname) not in files:
                    link = f"{member.name!r} -> {member.linkname!r}"
                    raise UnsafeArchive(f"{archive.name}: hard link {link} names no file before it")
                elif member.isfile():
                    files.add(posixpath.normpath(member.name))
            if hasattr(tarfile, "data_filter"):
                tar.extractall(destination, filter="data")
            else:  # Python before 3.11.4: our checks above, and plain modes
                for member in members:
                    member.mode &= 0o755
                    member.uid = member.gid = 0
                    member.uname = member.gname = ""
                tar.extractall(destination, members=members, numeric_owner=True)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UnsafeArchive(f"{archive.name}: cannot extract: {exc}") from None


def _check_symlink(archive: str, member: tarfile.TarInfo, links: set[str]) -> None:
    target = member.linkname
    if not target or target.startswith("/") or "\\" in target or ".." in PurePosixPath(target).parts:
        raise UnsafeArchive(f"{archive}: link {member.name!r} -> {target!r} points outside the sdist")
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(member.name), target))
    _check_not_through_link(archive, joined, links, what=f"link {member.name!r} -> {target!r}")
    if joined in links:
        raise UnsafeArchive(f"{archive}: link {member.name!r} -> {target!r} points at another link")


def _check_not_through_link(archive: str, name: str, links: set[str], what: str = "") -> None:
    parts = PurePosixPath(posixpath.normpath(name)).parts
    for depth in range(1, len(parts)):
        prefix = posixpath.join(*parts[:depth])
        if prefix in links:
            described = what or f"member {name!r}"
            raise UnsafeArchive(f"{archive}: {described} goes through the link {prefix!r}")


def _extract_zip(archive: Path, destination: Path, limits: ExtractLimits) -> None:
    try:
        with zipfile.ZipFile(archive) as zipped:
            infos = zipped.infolist()
            _check_counts(archive.name, len(infos), [info.file_size for info in infos], limits)
            for info in infos:
                _check_name(archive.name, info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise UnsafeArchive(f"{archive.name}: member {info.filename!r} is a symbolic link")
            zipped.extractall(destination)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsafeArchive(f"{archive.name}: cannot extract: {exc}") from None


def _check_counts(archive: str, count: int, sizes: list[int], limits: ExtractLimits) -> None:
    if count > limits.max_members:
        raise UnsafeArchive(f"{archive}: {count} members, more than the limit of {limits.max_members}")
    if sizes and max(sizes) > limits.max_member_bytes:
        raise UnsafeArchive(f"{archive}: a member of {max(sizes)} bytes exceeds {limits.max_member_bytes}")
    if sum(sizes) > limits.max_total_bytes:
        raise UnsafeArchive(
            f"{archive}: {sum(sizes)} bytes unpacked exceed the limit of {limits.max_total_bytes}"
        )


def source_date_epoch(archive: Path) -> int:
    """The newest mtime inside the sdist: the same sdist always gives the same timestamps in the wheel."""
    newest = ZIP_EPOCH
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zipped:
                for info in zipped.infolist():
                    newest = max(newest, int(time.mktime((*info.date_time, 0, 0, -1))))
        else:
            with tarfile.open(archive) as tar:
                for member in tar.getmembers():
                    newest = max(newest, int(member.mtime))
    except (OSError, tarfile.TarError, zipfile.BadZipFile, OverflowError, ValueError):
        pass  # extraction reports the broken archive
    return newest


def build_system(project: Path) -> dict[str, Any] | None:
    """The ``[build-system]`` table as written (None: no pyproject.toml or no table); types checked later."""
    import tomllib

    pyproject = project / "pyproject.toml"
    if not pyproject.is_file():
        return None
    try:
        document = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UnsafeArchive(f"pyproject.toml is not valid TOML: {exc}") from None
    table = document.get("build-system")
    return table if isinstance(table, dict) else None


def main(argv: list[str]) -> int:
    archive, destination, raw_limits = Path(argv[0]), Path(argv[1]), json.loads(argv[2])
    limits = ExtractLimits(**raw_limits)
    try:
        project = extract_sdist(archive, destination, limits)
        answer: dict[str, Any] = {
            "project": project.name,
            "epoch": source_date_epoch(archive),
            "build_system": build_system(project),
        }
    except UnsafeArchive as exc:
        answer = {"error": str(exc)}
    with os.fdopen(int(os.environ["WHEELFARM_RESULT_FD"]), "w", encoding="utf-8") as result:
        json.dump(answer, result, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
