"""PEP 792 project status as a page layer: a quarantined project offers no files at all (and so no builds),
whatever else its page lists; the names of quarantined projects are remembered so their cached files are
not served either."""

from __future__ import annotations

import dataclasses

from proxy.index.names import NormalizedName
from proxy.pages.cache import PageResult
from proxy.pages.source import PageSource

QUARANTINED_REMEMBERED = 100_000  # the names are upstream's to choose: bounded


class PolicyPages:
    def __init__(self, source: PageSource) -> None:
        self._source = source
        self._quarantined: set[NormalizedName] = set()

    async def project(self, name: NormalizedName, *, max_age: float | None = None) -> PageResult:
        result = await self._source.project(name, max_age=max_age)
        page = result.page
        if not page.quarantined:
            self._quarantined.discard(name)
            return result
        if len(self._quarantined) < QUARANTINED_REMEMBERED:
            self._quarantined.add(name)
        return dataclasses.replace(result, page=dataclasses.replace(page, files=())) if page.files else result

    def quarantined(self, name: NormalizedName) -> bool:
        """Whether the last page of ``name`` seen said quarantined (its cached files are not served)."""
        return name in self._quarantined

    def __len__(self) -> int:
        """How many quarantined names are remembered (the admin summary shows it)."""
        return len(self._quarantined)
