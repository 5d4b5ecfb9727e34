"""Pure: which sdist a build-ahead request means, for a target, read the way pip reads requirements."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import Version

from builder.tags import Target
from proxy.builds.requirementsfile import Include, requirement_items
from proxy.index.model import DistFile, ProjectPage
from proxy.index.overlay import releases_needing_wheels


class BadRequirement(ValueError):
    pass


def parse_requirements(lines: Iterable[str]) -> list[Requirement]:
    """The requirements of requirements-file lines (proxy/builds/requirementsfile.py has the grammar).
    ``-r`` lines are skipped: they name files on the operator's machine, which the command line reads and
    sends."""
    requirements = []
    for item in requirement_items("\n".join(lines)):
        if isinstance(item, Include):
            continue
        try:
            requirements.append(Requirement(item))
        except InvalidRequirement as exc:
            raise BadRequirement(f"{item!r} is not a requirement: {exc}") from None
    return requirements


def applies_to(requirement: Requirement, target: Target) -> bool:
    """Whether the requirement's environment marker (PEP 508) holds on the target."""
    if requirement.marker is None:
        return True
    environment: dict[str, str] = {key: str(value) for key, value in default_environment().items()}
    major, minor = target.python
    environment.update(
        python_version=f"{major}.{minor}",
        python_full_version=f"{major}.{minor}.0",
        implementation_name="cpython",
        platform_python_implementation="CPython",
        sys_platform="linux",
        platform_system="Linux",
        os_name="posix",
        platform_machine=target.arch,
    )
    return requirement.marker.evaluate(environment)


@dataclass(frozen=True, slots=True)
class Chosen:
    version: Version
    sdist: DistFile


def choose_sdist(page: ProjectPage, requirement: Requirement, target: Target) -> Chosen | None:
    """The newest release the requirement allows that lacks a wheel for the target (None: no such one)."""
    pinned = any(spec.operator in ("==", "===") for spec in requirement.specifier)
    allowed = [
        (version, sdist)
        for version, sdist in releases_needing_wheels(page, target)
        if requirement.specifier.contains(version, prereleases=True) and (pinned or not sdist.yanked)
    ]
    # PEP 440: pre-releases only when the specifier names one, or when nothing final matches.
    finals = [pair for pair in allowed if not pair[0].is_prerelease]
    if finals and not requirement.specifier.prereleases:
        allowed = finals
    if not allowed:
        return None
    version, sdist = max(allowed, key=lambda pair: pair[0])
    return Chosen(version, sdist)
