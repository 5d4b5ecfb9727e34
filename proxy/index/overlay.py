"""The overlay: for one target, add built wheels and build-pending links to a (proxied) project page.

A release needs the overlay when it has an sdist (with a sha256 to build from) and upstream has no wheel
the target can install. Then the page lists, right after the sdist, either the wheel we built for
(sdist sha256, target) with its real name, sha256, size and metadata, or, when no build of that key has
failed and the builder may build it, a build-pending link. Both carry the sdist's yank state and
requires-python, so upstream's yank flows into them (PEP 592).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterator

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_version,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import Version

from builder.jobs import Artifact, BuildKey, BuildRecord, BuildState
from builder.tags import Target
from proxy.builds.service import Capabilities, ProjectBuilds
from proxy.index.model import DistFile, ProjectPage
from proxy.index.urls import FROM_PAGE, built_path, pending_path, proxied_page

Offer = Callable[[Version, DistFile, Target], tuple[DistFile, ...]]


def releases_needing_wheels(page: ProjectPage, target: Target) -> Iterator[tuple[Version, DistFile]]:
    """(version, sdist) for each release with a buildable sdist and no wheel the target supports."""
    sdists: dict[Version, list[DistFile]] = defaultdict(list)
    # Per version: is there a supporting wheel at all, and is one of them not yanked (indexed so the
    # check below is linear in the page: pages of up to 1,000 files render on the event loop).
    wheel_yanked: dict[Version, bool] = {}
    for dist in page.files:
        if dist.filename.endswith(".whl"):
            try:
                _, version, _, tags = parse_wheel_filename(dist.filename)
            except InvalidWheelFilename:
                continue
            if target.supports(frozenset(tags)):
                wheel_yanked[version] = wheel_yanked.get(version, True) and bool(dist.yanked)
        else:
            try:
                _, version = parse_sdist_filename(dist.filename)
            except InvalidSdistFilename:
                continue
            if dist.sha256 is not None:
                sdists[version].append(dist)
    for version, candidates in sorted(sdists.items()):
        sdist = min(candidates, key=lambda d: (not d.filename.endswith(".tar.gz"), d.filename))
        # A yanked wheel does not cover a release whose sdist is not yanked: clients skip the wheel.
        all_yanked = wheel_yanked.get(version)
        if all_yanked is not None and (not all_yanked or sdist.yanked):
            continue
        if _python_may_match(sdist.requires_python, target):
            yield version, sdist


def apply_overlay(page: ProjectPage, targets: tuple[Target, ...], offer: Offer) -> ProjectPage:
    """``page`` with what ``offer`` gives for each release that needs a wheel for one of ``targets``,
    listed right after the release's sdist (in the order of ``targets``), each file name once."""
    additions: dict[str, list[DistFile]] = defaultdict(list)
    listed = {dist.filename for dist in page.files}
    for target in targets:
        for version, sdist in releases_needing_wheels(page, target):
            for extra in offer(version, sdist, target):
                if extra.filename not in listed:
                    listed.add(extra.filename)
                    additions[sdist.filename].append(extra)
    if not additions:
        return page
    files: list[DistFile] = []
    for dist in page.files:
        files.append(dist)
        files.extend(additions.get(dist.filename, ()))
    return dataclasses.replace(page, files=tuple(files))


def overlaid_page(
    page: ProjectPage, targets: tuple[Target, ...], capabilities: Capabilities, builds: ProjectBuilds
) -> ProjectPage:
    """The page a client sees: proxied URLs, plus built wheels and pending links for ``targets`` (its own;
    for a locking client, every target the farm serves on its platform). Pure: what the build service
    holds comes in as two snapshots."""
    proxied = proxied_page(page)
    if not targets:
        return proxied
    project = page.name

    def offer(version: Version, sdist: DistFile, target: Target) -> tuple[DistFile, ...]:
        assert sdist.sha256 is not None
        record = builds.record(BuildKey(sdist.sha256, target.id))
        if record is not None and record.state is BuildState.DONE:
            tags = frozenset(parse_wheel_filename(record.wheel_filename)[3])
            if not target.supports(tags):
                return ()
            pending = pending_filename(project, version, target)
            built = built_file(record, sdist)
            return (built,) if pending == built.filename else (built, built_alias(record, sdist, pending))
        if record is not None:
            return ()  # failed: remembered until a retry is asked for (or the builder changes)
        if builds.allowed and capabilities.serves(target):
            return (pending_file(project, version, sdist, target),)
        return ()

    return apply_overlay(proxied, targets, offer)


def built_file(record: BuildRecord, sdist: DistFile) -> DistFile:
    wheelfarm = {"built-from": sdist.filename, "build-log": FROM_PAGE + built_path(record, Artifact.LOG)}
    if record.provenance_sha256:
        wheelfarm["provenance"] = FROM_PAGE + built_path(record, Artifact.PROVENANCE)
    if record.attestation_sha256:
        wheelfarm["attestation"] = FROM_PAGE + built_path(record, Artifact.ATTESTATION)
    return DistFile(
        filename=record.wheel_filename,
        url=FROM_PAGE + built_path(record, Artifact.WHEEL),
        hashes={"sha256": record.wheel_sha256},
        requires_python=sdist.requires_python,
        yanked=sdist.yanked,
        core_metadata={"sha256": record.metadata_sha256} if record.metadata_sha256 else False,
        size=record.wheel_size,
        # PEP 740: the farm's signed attestation of the wheel, wrapped as a provenance object.
        provenance=FROM_PAGE + built_path(record, Artifact.PEP740) if record.pep740_sha256 else None,
        wheelfarm=wheelfarm,
    )


def built_alias(record: BuildRecord, sdist: DistFile, pending: str) -> DistFile:
    """The built wheel once more under the name its build-pending link had: a lock that recorded that name
    (poetry matches locked files by name) still finds it, with the real URL and sha256."""
    return dataclasses.replace(built_file(record, sdist), filename=pending)


def pending_filename(project: str, version: Version, target: Target) -> str:
    """A wheel name the target accepts (pip and uv do not re-check tags after download: measured)."""
    name = project.replace("-", "_")
    return f"{name}-{canonicalize_version(version, strip_trailing_zero=False)}-{target.interpreter_tag}-" + (
        f"{target.interpreter_tag}-{target.platform}.whl"
    )


def pending_file(project: str, version: Version, sdist: DistFile, target: Target) -> DistFile:
    assert sdist.sha256 is not None
    filename = pending_filename(project, version, target)
    return DistFile(
        filename=filename,
        url=FROM_PAGE + pending_path(target, project, sdist.sha256, filename),
        requires_python=sdist.requires_python,
        yanked=sdist.yanked,
        wheelfarm={"built-from": sdist.filename, "pending": "true"},
    )


def _python_may_match(requires_python: str | None, target: Target) -> bool:
    if not requires_python:
        return True
    try:
        specifier = SpecifierSet(requires_python)
    except InvalidSpecifier:
        return True
    major, minor = target.python
    return any(specifier.contains(f"{major}.{minor}.{patch}", prereleases=True) for patch in (0, 99))
