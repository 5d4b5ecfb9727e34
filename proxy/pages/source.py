"""The page-source interface that every layer of project pages implements and wraps.

From the bottom up (proxy/web/app.py stacks them):

    PageCache           proxy/pages/cache.py      upstream's page, kept fresh: TTL, ETag, stale-if-error
    PolicyPages         proxy/pages/policy.py     PEP 792 project status: a quarantined project lists no files
    FollowingUpstream   proxy/builds/following.py tells the build service when upstream's files changed
    OverlayPages        proxy/pages/overlaid.py   per client target: proxied URLs, built wheels, build links

Each layer takes the one below as a ``PageSource``; render and negotiate (proxy/index/) stay pure.
"""

from __future__ import annotations

from typing import Protocol

from proxy.index.names import NormalizedName
from proxy.pages.cache import PageResult


class PageSource(Protocol):
    async def project(self, name: NormalizedName, *, max_age: float | None = None) -> PageResult:
        """The page of ``name`` (ProjectNotFound when upstream has none); ``max_age`` overrides the cache's
        TTL (0 forces a revalidation)."""
        ...
