"""What the request handlers share, built once per application and reached through one AppKey."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from aiohttp import web

from proxy.builds.service import BuildService
from proxy.cluster.keyring import ClusterKeyring
from proxy.pages.cache import CacheOutcome, PageCache
from proxy.pages.overlaid import OverlayPages
from proxy.pages.policy import PolicyPages
from proxy.pages.rootlist import RootList
from proxy.pages.source import PageSource
from proxy.provenance.keys import FarmKeys
from proxy.settings import Settings
from proxy.storage.files import FileStore
from proxy.storage.scrub import Verifier
from proxy.web.metrics import Metrics


@dataclass(eq=False)
class Services:
    """The page layers (proxy/pages/source.py) are reached at the level each handler needs: clients' pages
    from the top (``overlay``), files and builds check what upstream lists through ``pages`` (status
    policy applied, builds following upstream), the admin reads and forgets the ``page_cache`` itself."""

    settings: Settings
    overlay: OverlayPages
    pages: PageSource
    policy: PolicyPages
    page_cache: PageCache
    root: RootList
    files: FileStore
    metrics: Metrics
    verifier: Verifier
    builds: BuildService
    signing: FarmKeys | None = None  # the keys built wheels' provenance is signed with (None: no builds here)
    keyring: ClusterKeyring | None = None  # in a cluster: every process's public keys


class RequestOutcome(enum.Enum):
    """How a request was answered, as the access log and ``wheelfarm_cache_outcomes`` name it."""

    HIT = "hit"  # from the cache, upstream not asked
    MISS = "miss"  # fetched from upstream now
    REVALIDATED = "revalidated"  # upstream said the cached page is current
    STALE = "stale"  # upstream failed or was slow: the cached page, marked stale
    BUILDING = "building"  # the client waited for (or joined) a build
    BUILT = "built"  # a finished build's wheel, through its pending link

    @staticmethod
    def of_cache(outcome: CacheOutcome) -> RequestOutcome:
        return _OF_CACHE[outcome]  # a dict: Enum(value) is slow enough to show on a warm page


_OF_CACHE = {outcome: RequestOutcome(outcome.value) for outcome in CacheOutcome}


SERVICES = web.AppKey("services", Services)
CACHE_OUTCOME = web.RequestKey("cache_outcome", RequestOutcome)  # set by handlers, read by the access log
REQUEST_ID = web.RequestKey("request_id", str)
ROUTE = web.RequestKey("route", str)  # the matched route's pattern, set by the error middleware
# Why aiohttp's parser refused the request (no route, no handler ran), set by proxy.edge.
UNPARSED = web.RequestKey("unparsed", str)
