"""The one in-memory model of index pages (PEP 503 / 691 / 592 / 658 / 714 / 700 / 740).

Parsers build it from upstream bytes, renderers turn it into HTML or JSON; nothing else knows a wire format.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from proxy.index.names import NormalizedName

# 1.1: PEP 700 (size, upload-time, versions); 1.3: PEP 740 (provenance); 1.4: PEP 792 (project-status).
# (1.2 was PEP 708's tracks and alternate-locations, optional keys we never send.)
JSON_API_VERSION = "1.4"


class ProjectState(enum.Enum):
    """PEP 792 project status. A quarantined project offers no files at all (and so no builds)."""

    ACTIVE = "active"
    ARCHIVED = "archived"
    QUARANTINED = "quarantined"
    DEPRECATED = "deprecated"


@dataclass(frozen=True, slots=True)
class ProjectStatus:
    state: ProjectState
    reason: str | None = None

    @classmethod
    def parse(cls, status: object, reason: object) -> ProjectStatus | None:
        """From upstream's values; an unknown status is kept as active (PEP 792: clients treat it so)."""
        if not isinstance(status, str) or not status:
            return None
        try:
            state = ProjectState(status.strip().lower())
        except ValueError:
            state = ProjectState.ACTIVE
        return cls(state, reason if isinstance(reason, str) and reason else None)


@dataclass(frozen=True, slots=True)
class DistFile:
    """One file of a project page.

    ``yanked`` is False, True (PEP 592 with no reason) or the reason string. ``core_metadata`` is False, True
    (metadata exists, no hashes given) or the hashes of the ``.metadata`` file (PEP 658, renamed by PEP 714).
    """

    filename: str
    url: str
    hashes: Mapping[str, str] = field(default_factory=dict)
    requires_python: str | None = None
    yanked: bool | str = False
    core_metadata: bool | Mapping[str, str] = False
    size: int | None = None
    upload_time: str | None = None
    provenance: str | None = None
    # wheelfarm's own facts about a file (build log, provenance record, ...): JSON "_wheelfarm" (PEP 691
    # reserves underscore keys for the index's private use), HTML data-wheelfarm-* attributes.
    wheelfarm: Mapping[str, str] = field(default_factory=dict)

    @property
    def sha256(self) -> str | None:
        value = self.hashes.get("sha256")
        return value.lower() if value else None

    @property
    def metadata_sha256(self) -> str | None:
        if isinstance(self.core_metadata, Mapping):
            value = self.core_metadata.get("sha256")
            return value.lower() if value else None
        return None

    @property
    def has_metadata(self) -> bool:
        return bool(self.core_metadata)


@dataclass(frozen=True, slots=True)
class ProjectPage:
    """A project's file list. ``versions`` is None when upstream did not send PEP 700 versions."""

    name: NormalizedName
    files: tuple[DistFile, ...]
    versions: tuple[str, ...] | None = None
    last_serial: int | None = None
    status: ProjectStatus | None = None  # PEP 792; None: upstream said nothing (active)

    @property
    def quarantined(self) -> bool:
        return self.status is not None and self.status.state is ProjectState.QUARANTINED

    def file_by_key(self, key: str) -> DistFile | None:
        for dist in self.files:
            if file_key(dist) == key:
                return dist
        return None


class PageFormat(enum.Enum):
    """The three response formats of the simple API (PEP 691 content types, plus legacy HTML)."""

    JSON_V1 = "application/vnd.pypi.simple.v1+json"
    HTML_V1 = "application/vnd.pypi.simple.v1+html"
    LEGACY_HTML = "text/html"

    @property
    def content_type(self) -> str:
        return self.value

    @property
    def is_json(self) -> bool:
        return self is PageFormat.JSON_V1


def file_key(dist: DistFile) -> str:
    """The key a proxied file is stored and addressed under.

    Files are content addressed by sha256 (verified while downloading). An upstream that gives no sha256 gets
    the file keyed by the sha256 of its URL instead, prefixed ``url-`` so the two can never be confused.
    """
    sha = dist.sha256
    if sha is not None:
        return sha
    return "url-" + hashlib.sha256(dist.url.encode()).hexdigest()
