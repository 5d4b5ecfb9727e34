"""Built wheels follow their sdist: a page layer that tells the build service when upstream's page of a
project changed (or the project is gone), so builds of sdists no longer listed become orphans and builds of
listed ones stop being orphans."""

from __future__ import annotations

from collections import OrderedDict

from proxy.builds.service import BuildService
from proxy.index.names import NormalizedName
from proxy.pages.cache import CacheOutcome, PageResult, ProjectNotFound
from proxy.pages.source import PageSource

GONE = "gone"  # the version remembered for a project upstream has no page for


class FollowingUpstream:
    def __init__(self, source: PageSource, builds: BuildService, remembered: int = 2048) -> None:
        self._source = source
        self._builds = builds
        self._remembered = remembered
        # The page version last reported per project: many clients joining one fetch report it once.
        self._reported: OrderedDict[NormalizedName, str] = OrderedDict()

    async def project(self, name: NormalizedName, *, max_age: float | None = None) -> PageResult:
        try:
            result = await self._source.project(name, max_age=max_age)
        except ProjectNotFound as gone:
            if gone.outcome is CacheOutcome.MISS:  # upstream said so just now, not a remembered 404
                await self._report(name, GONE, frozenset())
            raise
        if result.outcome is CacheOutcome.MISS:  # new content from upstream
            sdists = frozenset(dist.sha256 for dist in result.page.files if dist.sha256)
            await self._report(name, result.version, sdists)
        return result

    async def _report(self, name: NormalizedName, version: str, sdists: frozenset[str]) -> None:
        if self._reported.get(name) == version:
            return
        self._reported[name] = version
        self._reported.move_to_end(name)
        while len(self._reported) > self._remembered:
            self._reported.popitem(last=False)
        await self._builds.upstream_changed(name, sdists)
