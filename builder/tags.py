"""Targets: what a client can install, and the only place that computes tag sets (with packaging.tags).

A target is an interpreter plus the most specific platform it runs on, written like a wheel's tag pair:
``cp311-manylinux_2_36_x86_64`` (CPython 3.11 on glibc 2.36, x86_64) or ``cp312-musllinux_1_2_aarch64``.
Builders run on Linux, so only Linux targets exist; other clients get the plain proxy. That spelling names
the target in URLs (``/t/<target>/``) and in build keys. pip and uv describe their target in the User-Agent
(a JSON blob after ``pip/VERSION `` or ``uv/VERSION ``); ``target_from_user_agent`` reads it leniently and
gives None when it cannot tell.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import orjson
from packaging.tags import Tag, compatible_tags, cpython_tags

# Legacy manylinux names (PEP 513, 571, 599) that alias a glibc version (PEP 600).
_LEGACY_MANYLINUX = {(2, 17): "manylinux2014", (2, 12): "manylinux2010", (2, 5): "manylinux1"}
_LEGACY_ARCHS = {"x86_64", "i686", "aarch64", "ppc64le", "s390x", "armv7l"}
_TARGET = re.compile(
    r"^cp(?P<major>3)(?P<minor>\d{1,2})-(?P<platform>"
    r"(?P<libc>manylinux|musllinux)_(?P<libc_major>\d+)_(?P<libc_minor>\d+)_(?P<arch>[a-z0-9_]+))\Z"
)
_USER_AGENT = re.compile(r"^(?:pip|uv)/\S+ (?P<json>\{.*\})\s*$", re.DOTALL)
_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64", "x64": "x86_64"}


class InvalidTarget(ValueError):
    def __init__(self, text: str) -> None:
        super().__init__(
            f"not a target: {text[:80]!r}; "
            "expected e.g. cp311-manylinux_2_36_x86_64 or cp312-musllinux_1_2_x86_64"
        )


@dataclass(frozen=True)  # no slots: cached_property keeps the tag sets in __dict__
class Target:
    """A CPython version on a platform; ``platform`` is the most specific platform tag it supports."""

    python: tuple[int, int]
    platform: str

    @classmethod
    def parse(cls, text: str) -> Target:
        match = _TARGET.match(text)
        if match is None:
            raise InvalidTarget(text)
        return cls((int(match["major"]), int(match["minor"])), match["platform"])

    @cached_property  # part of every page's render key
    def id(self) -> str:
        return f"cp{self.python[0]}{self.python[1]}-{self.platform}"

    @property
    def python_version(self) -> str:
        return f"{self.python[0]}.{self.python[1]}"

    @property
    def arch(self) -> str:
        match = _TARGET.match(self.id)
        assert match is not None
        return match["arch"]

    @property
    def interpreter_tag(self) -> str:
        return f"cp{self.python[0]}{self.python[1]}"

    def __str__(self) -> str:
        return self.id

    @cached_property
    def platforms(self) -> tuple[str, ...]:
        """Every platform tag this target supports, most specific first."""
        return tuple(_platforms(self.platform))

    @cached_property
    def tags(self) -> frozenset[Tag]:
        return frozenset(self.ordered_tags)

    @cached_property
    def ordered_tags(self) -> tuple[Tag, ...]:
        """Most preferred first, as packaging.tags.sys_tags orders them."""
        platforms = list(self.platforms)
        return (
            *cpython_tags(python_version=self.python, platforms=platforms),
            *compatible_tags(
                python_version=self.python, interpreter=self.interpreter_tag, platforms=platforms
            ),
        )

    def supports(self, tags: frozenset[Tag]) -> bool:
        return not self.tags.isdisjoint(tags)


def _platforms(platform: str) -> Iterator[str]:
    match = _TARGET.match("cp30-" + platform)
    assert match is not None  # Target.parse checked it
    family, arch = match["libc"], match["arch"]
    major, newest = int(match["libc_major"]), int(match["libc_minor"])
    oldest = 5 if family == "manylinux" else 0  # PEP 600 starts at glibc 2.5; PEP 656 at musl 1.0
    for minor in range(newest, oldest - 1, -1):
        yield f"{family}_{major}_{minor}_{arch}"
        legacy = _LEGACY_MANYLINUX.get((major, minor)) if family == "manylinux" else None
        if legacy and arch in _LEGACY_ARCHS:
            yield f"{legacy}_{arch}"
    yield f"linux_{arch}"


@functools.lru_cache(maxsize=1024)  # clients repeat their User-Agent on every request
def target_from_user_agent(user_agent: str | None) -> Target | None:
    """The target pip or uv describes in its User-Agent, or None (another client, or facts missing)."""
    if not user_agent:
        return None
    match = _USER_AGENT.match(user_agent.strip())
    if match is None:
        return None
    try:
        data = orjson.loads(match["json"])
    except orjson.JSONDecodeError:
        return None
    return target_from_environment(data) if isinstance(data, dict) else None


# uv commands that write a lock file (uv says which in its User-Agent's installer.subcommand).
_LOCKING_SUBCOMMANDS = frozenset({"lock", "sync", "add", "remove", "run", "export", "tree"})


@functools.lru_cache(maxsize=1024)
def locking_client(user_agent: str | None) -> bool:
    """Is this client writing a lock file for every Python (uv lock and the commands that lock)?"""
    if not user_agent or not user_agent.startswith("uv/"):
        return False
    match = _USER_AGENT.match(user_agent.strip())
    try:
        data = orjson.loads(match["json"]) if match else None
    except orjson.JSONDecodeError:
        return False
    installer = _dict(data.get("installer")) if isinstance(data, dict) else {}
    subcommand = installer.get("subcommand")
    return isinstance(subcommand, list) and bool(subcommand) and subcommand[0] in _LOCKING_SUBCOMMANDS


def target_from_environment(data: dict[str, Any]) -> Target | None:
    implementation = _dict(data.get("implementation"))
    if str(implementation.get("name", "")).lower() != "cpython":
        return None  # PyPy and others: no builds for them (yet); plain proxy
    python = _python_version(str(implementation.get("version") or data.get("python") or ""))
    system = str(_dict(data.get("system")).get("name", "")).lower()
    cpu = str(data.get("cpu") or "").lower()
    cpu = _ARCH_ALIASES.get(cpu, cpu)
    if python is None or not re.fullmatch(r"[a-z0-9_]+", cpu or "-"):
        return None
    if system == "linux":
        libc = _dict(_dict(data.get("distro")).get("libc")) or _dict(data.get("libc"))
        version = _two_numbers(str(libc.get("version", "")))
        lib = str(libc.get("lib", "")).lower()
        if version is None or lib not in ("glibc", "musl"):
            return None
        family = "manylinux" if lib == "glibc" else "musllinux"
        return Target(python, f"{family}_{version[0]}_{version[1]}_{cpu}")
    return None  # macOS and Windows clients get the plain proxy: builders build on Linux only


def _python_version(text: str) -> tuple[int, int] | None:
    numbers = _two_numbers(text)
    return numbers if numbers is not None and numbers[0] == 3 else None


def _two_numbers(text: str) -> tuple[int, int] | None:
    match = re.match(r"^\s*(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2])) if match else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
