"""Hostile sdists whose archive tries to write outside the folder it is extracted into.

An sdist is extracted before any of its code runs, by the builder itself (builder/extract.py), outside the
build's sandbox: an archive member named with '..' or an absolute path, a symbolic or hard link aimed
outside, or a member written through such a link would overwrite the host's files (the tarfile traversal
of CVE-2007-4559), and a chain of links through folders past PATH_MAX fools even tarfile's "data" filter
before Python 3.11.13 (CVE-2025-4517). Each such sdist must fail in the extract phase, with the reason in
its build log, before any of its code runs, and write nothing outside its work folder; so must an sdist
that unpacks to more than the output limit.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from dists import in_tree_backend_sdist
from hostile import MAX_OUTPUT_MB, MIB, UP_TO_BASE, EvilArchive, Farm, Member, marker, needs_bwrap, repack

pytestmark = needs_bwrap


def _dotdot(root: str, base: Path) -> EvilArchive:
    name = marker("dotdot")
    return EvilArchive(
        [Member(f"{root}/{UP_TO_BASE}{name}", data=b"pwned")], "climbs out with '..'", [base / name]
    )


def _absolute(root: str, base: Path) -> EvilArchive:
    aimed = base / marker("absolute")
    return EvilArchive([Member(str(aimed), data=b"pwned")], "has an absolute path", [aimed])


def _symlink_absolute(root: str, base: Path) -> EvilArchive:
    # A link to a host file, then a regular member of the same name: written through, it would overwrite it.
    victim = base / marker("victim")
    members = [Member(f"{root}/link", tarfile.SYMTYPE, str(victim)), Member(f"{root}/link", data=b"pwned")]
    return EvilArchive(members, "points outside the sdist", [], victim)


def _symlink_etc_passwd(root: str, base: Path) -> EvilArchive:
    return EvilArchive(
        [Member(f"{root}/link", tarfile.SYMTYPE, "/etc/passwd")], "points outside the sdist", []
    )


def _symlink_dotdot(root: str, base: Path) -> EvilArchive:
    victim = base / marker("victim")
    members = [
        Member(f"{root}/up", tarfile.SYMTYPE, UP_TO_BASE + victim.name),
        Member(f"{root}/up", data=b"pwned"),
    ]
    return EvilArchive(members, "points outside the sdist", [], victim)


def _symlinked_folder(root: str, base: Path) -> EvilArchive:
    # A link to a folder outside, then a member "inside" the link.
    name = marker("through-link")
    members = [
        Member(f"{root}/out", tarfile.SYMTYPE, UP_TO_BASE),
        Member(f"{root}/out/{name}", data=b"pwned"),
    ]
    return EvilArchive(members, "points outside the sdist", [base / name])


def _symlink_chain(root: str, base: Path) -> EvilArchive:
    # 'd' -> '.' makes "d/d/d/d/../../../../.." look like the project folder to a lexical check, while the
    # file system resolves it to five folders up (``base``).
    name = marker("chain")
    members = [
        Member(f"{root}/d", tarfile.SYMTYPE, "."),
        Member(f"{root}/esc", tarfile.SYMTYPE, "d/d/d/d/" + UP_TO_BASE.removesuffix("/")),
        Member(f"{root}/esc/{name}", data=b"pwned"),
    ]
    return EvilArchive(members, "points outside the sdist", [base / name])


def _symlink_chain_past_path_max(root: str, base: Path) -> EvilArchive:
    # CVE-2025-4517's pattern: links through folders whose real path exceeds PATH_MAX, so that
    # os.path.realpath (tarfile's "data" filter, before Python 3.11.13) stops resolving and goes on
    # lexically; the lexical check of builder/extract.py is fooled the same way.
    name = marker("past-path-max")
    long = "d" * 250
    members: list[Member] = []
    path = root
    for letter in "abcdefghijklmnopqrst":
        members.append(Member(f"{path}/{long}", tarfile.DIRTYPE))
        members.append(Member(f"{path}/{letter}", tarfile.SYMTYPE, long))
        path = f"{path}/{letter}"
    steps = path.removeprefix(root + "/")
    members.append(Member(f"{path}/l", tarfile.SYMTYPE, "/".join([".."] * 20)))  # really: {root} itself
    members.append(Member(f"{root}/escape", tarfile.SYMTYPE, steps + "/l/" + UP_TO_BASE.removesuffix("/")))
    members.append(Member(f"{root}/escape/{name}", data=b"pwned"))
    return EvilArchive(members, "", [base / name])


def _hardlink_absolute(root: str, base: Path) -> EvilArchive:
    victim = base / marker("victim")
    members = [Member(f"{root}/hard", tarfile.LNKTYPE, str(victim)), Member(f"{root}/hard", data=b"pwned")]
    return EvilArchive(members, "names no file before it", [], victim)


def _hardlink_dotdot(root: str, base: Path) -> EvilArchive:
    # A hard link's target is relative to the archive's root, i.e. to src/: four '..' reach ``base``.
    victim = base / marker("victim")
    members = [
        Member(f"{root}/hard", tarfile.LNKTYPE, "../../../../" + victim.name),
        Member(f"{root}/hard", data=b"pwned"),
    ]
    return EvilArchive(members, "names no file before it", [], victim)


EVIL_ARCHIVES: dict[str, tuple[Callable[[str, Path], EvilArchive], bool]] = {
    # id: (the archive, as .zip)
    "dotdot": (_dotdot, False),
    "absolute": (_absolute, False),
    "symlink-etc-passwd": (_symlink_etc_passwd, False),
    "symlink-absolute": (_symlink_absolute, False),
    "symlink-dotdot": (_symlink_dotdot, False),
    "symlinked-folder": (_symlinked_folder, False),
    "symlink-chain": (_symlink_chain, False),
    "hardlink-absolute": (_hardlink_absolute, False),
    "hardlink-dotdot": (_hardlink_dotdot, False),
    "zip-dotdot": (_dotdot, True),
    "zip-absolute": (_absolute, True),
}


@pytest.mark.parametrize("case", sorted(EVIL_ARCHIVES))
def test_unsafe_archive_is_refused_and_writes_nothing_outside(farm: Farm, case: str) -> None:
    make, as_zip = EVIL_ARCHIVES[case]
    project = f"evil-{case}"
    evil = make(f"{project}-1.0", farm.base)  # make_sdist's top folder
    if evil.victim is not None:
        evil.victim.write_text("original")
    sdist = in_tree_backend_sdist(farm.sdists, project, "1.0", "    pass")
    farm.publish(project, repack(sdist, evil.members, as_zip=as_zip))

    failure = farm.failed_build(project)

    assert failure.phase == "extract"
    assert evil.refusal in failure.error
    assert evil.refusal in failure.log
    for aimed in evil.aimed_at:
        assert not aimed.exists(), f"extraction wrote {aimed}"
    if evil.victim is not None:
        assert evil.victim.read_text() == "original"
    assert "running the backend hook" not in failure.log  # nothing of the sdist ran


def test_link_chain_past_path_max_is_refused(farm: Farm) -> None:
    """CVE-2025-4517: tarfile's data filter alone (Python < 3.11.13) lets such a chain write anywhere."""
    project = "evil-past-path-max"
    root = f"{project}-1.0"
    evil = _symlink_chain_past_path_max(root, farm.base)
    sdist = in_tree_backend_sdist(farm.sdists, project, "1.0", "    pass")
    farm.publish(project, repack(sdist, evil.members))
    try:
        response = farm.build(project)
        escaped = [str(p) for p in evil.aimed_at if p.exists()]
        assert escaped == [], (
            f"extraction wrote outside the work folder: {escaped} (build: {response.status_code})"
        )
        assert response.status_code == 422
        assert "wheel build failed in extract" in response.text
    finally:
        for aimed in evil.aimed_at:
            aimed.unlink(missing_ok=True)


def test_an_sdist_that_unpacks_past_the_limits_is_refused(farm: Farm) -> None:
    sdist = in_tree_backend_sdist(farm.sdists, "tarbomb", "1.0", "    pass")
    zeros = Member("tarbomb-1.0/zeros.bin", data=bytes((MAX_OUTPUT_MB + 20) * MIB))  # packs to ~80 kB
    farm.publish("tarbomb", repack(sdist, [zeros]))

    failure = farm.failed_build("tarbomb")

    assert failure.phase == "extract"
    assert re.search(r"exceed|limit", failure.error)
