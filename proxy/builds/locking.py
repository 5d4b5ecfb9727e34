"""Pages for clients that write a lock file for every Python (``uv lock``, and the uv commands that lock).

A lock made from a page that offers a build-pending link only for the locking interpreter pins that URL
with no hash, and another Python later builds the sdist itself. So a locking client's page carries the
overlay of every target the farm serves on the client's platform (one per Python version the builders
have), and the newest release that needs wheels is built for all of them first, for as long as a uv client
is held: the lock then names each built wheel with its real file name and sha256. Older releases get
pending links for every target (a lock names them without a hash; a later lock has the hashes).
"""

from __future__ import annotations

import asyncio
import contextlib

from packaging.utils import InvalidSdistFilename, parse_sdist_filename

from builder.jobs import BuildJob, BuildKey
from builder.tags import Target
from proxy.builds.service import BuildService, Capabilities, NotOffered, ProjectBuilds
from proxy.index.model import ProjectPage
from proxy.index.overlay import releases_needing_wheels

MAX_BUILDS_PER_LOCK_PAGE = 16  # a page view must never start a build farm's worth of work


async def lock_view(
    service: BuildService,
    page: ProjectPage,
    target: Target,
    capabilities: Capabilities,
    builds: ProjectBuilds,
    hold_seconds: float,
) -> tuple[Target, ...]:
    """The targets a locking client's page shows; builds the newest release for them meanwhile, for at most
    ``hold_seconds`` ([builder] uv_hold_seconds)."""
    targets = capabilities.targets_like(target) or (target,)
    if not builds.allowed or page.quarantined:
        return targets
    keys = []
    for each in targets:
        needing = list(releases_needing_wheels(page, each))
        if not needing or not capabilities.serves(each):
            continue
        version, sdist = needing[-1]  # the newest: what a lock most likely picks
        assert sdist.sha256 is not None
        if builds.record(BuildKey(sdist.sha256, each.id)) is not None:
            continue
        try:
            parse_sdist_filename(sdist.filename)
        except InvalidSdistFilename:
            continue
        job = BuildJob(page.name, str(version), sdist.filename, sdist.sha256, sdist.url, each)
        try:
            await service.submit(job)
        except NotOffered:
            continue
        keys.append(job.key)
        if len(keys) >= MAX_BUILDS_PER_LOCK_PAGE:
            break
    if keys:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(hold_seconds):
                await asyncio.gather(*(service.wait(key) for key in keys))
    return targets
