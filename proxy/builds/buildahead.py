"""Pure: which sdist a build-ahead request means, for a target, read the way pip reads requirements."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import Version

from builder.tags import Target
from proxy.index.model import DistFile, ProjectPage
from proxy.index.overlay import releases_needing_wheels


class BadRequirement(ValueError):
    pass


def parse_requirements(lines: Iterable[str]) -> list[Requirement]:
    """Requirement lines as in a requirements file: comments, ``\\`` continuations and per-line options
    (``--hash=...``) are handled; lines that are only options (``-r``, ``--index-url``) are skipped."""
    requirements = []
    for line in _logical_lines(lines):
        text = line.split(" #", 1)[0].split("\t#", 1)[0]
        text = " ".join(word for word in text.split() if not word.startswith("-")).strip()
        if not text or line.lstrip().startswith(("#", "-")):
            continue
        try:
            requirements.append(Requirement(text))
        except InvalidRequirement as exc:
            raise BadRequirement(f"{text!r} is not a requirement: {exc}") from None
    return requirements


def _logical_lines(lines: Iterable[str]) -> Iterable[str]:
    pending = ""
    for raw in lines:
        for line in raw.splitlines() or [""]:
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            yield pending + line
            pending = ""
    if pending:
        yield pending


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
