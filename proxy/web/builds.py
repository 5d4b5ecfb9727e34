"""Build-pending links and built wheels.

``build/<target>/<project>/<sdist sha256>/<name>.whl`` starts (or joins) the build and holds the request
while it runs, never sending headers before the wheel is ready (pip's read timeout is 15 s): 200 with the
wheel when built, 503 with Retry-After while building (pip honours it; uv retries anyway), 422 naming the
failure and its log when the build failed. ``built/<sdist sha256>/<target>/...`` serves the wheel, its
``.metadata``, ``build.log`` and ``provenance.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time

from aiohttp import web
from packaging.utils import InvalidSdistFilename, parse_sdist_filename
from yarl import URL

from builder.jobs import BuildJob, BuildKey, BuildRecord, BuildState
from builder.pool import Builder
from builder.tags import InvalidTarget, Target
from proxy.builds.waiting import Waiting
from proxy.errors import BadRequest, NotFound, WheelfarmError
from proxy.index.model import DistFile
from proxy.web.files import CHUNK, IMMUTABLE
from proxy.web.pages import project_name
from proxy.web.security import error_response, plain_text
from proxy.web.services import CACHE_OUTCOME, SERVICES, Services

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_BUILT_FILES = re.compile(r"^(build\.log|provenance\.json|[A-Za-z0-9_.+!-]+\.whl(\.metadata)?)$")


class BuildFailedError(WheelfarmError):
    status = 422  # a 4xx: pip and uv do not retry it, and pip prints the reason phrase


class BuildNotOffered(NotFound):
    pass


def _builder(services: Services) -> Builder:
    if services.builder is None:
        raise NotFound("this proxy builds no wheels ([builder] enabled = false)")
    return services.builder


async def pending(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    builder = _builder(services)
    info = request.match_info
    try:
        target = Target.parse(info["target"])
    except InvalidTarget as exc:
        raise BadRequest(str(exc)) from None
    project = project_name(info["project"])
    sha = info["sdist"]
    if not _SHA256.match(sha) or project != info["project"]:
        raise NotFound(f"no such build link: {request.path}")
    page = (await services.pages.project(project)).page
    if page.quarantined:
        raise BuildNotOffered(f"{project} is quarantined upstream (PEP 792): no files, no builds")
    sdist = page.file_by_key(sha)
    if sdist is None or sdist.filename.endswith(".whl"):
        raise NotFound(f"{project} lists no sdist with sha256 {sha} upstream")
    key = BuildKey(sha, target.id)
    record = builder.record(key)
    if record is None:
        # A link from a page cached before a restart, followed during the start-up self-check: wait for it.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(services.settings.builder_hold_seconds):
                await builder.wait_ready()
        if not builder.serves(target):
            raise BuildNotOffered(f"no builder here builds for {target}")
        if not builder.allows(project):
            raise BuildNotOffered(f"the builder's policy does not allow building {project}")
        task = builder.start(_job(project, sdist, target))
        request[CACHE_OUTCOME] = "building"
        waiting = _waiting(services)
        age = _age(builder, key)
        if not waiting.gave_up(age):
            await asyncio.wait({task}, timeout=waiting.hold(request.headers.get("User-Agent")))
        if not task.done():
            return _still_building(waiting, _age(builder, key), sdist, target)
        record = task.result()
    return _answer(request, services, record)


def _waiting(services: Services) -> Waiting:
    settings = services.settings
    return Waiting(
        hold_seconds=settings.builder_hold_seconds,
        uv_hold_seconds=settings.builder_uv_hold_seconds,
        retry_after=settings.builder_retry_after,
        max_wait=settings.builder_max_wait,
    )


def _age(builder: Builder, key: BuildKey) -> float:
    """Seconds since the build of ``key`` was asked for (0 if it is not running)."""
    for running in builder.running():
        if running.job.key == key:
            return max(0.0, time.time() - running.queued_at)
    return 0.0


def _still_building(waiting: Waiting, age: float, sdist: DistFile, target: Target) -> web.Response:
    """503: pip honours Retry-After (RFC 9110 section 10.2.3); uv retries on its own schedule."""
    if waiting.gave_up(age):
        text = (
            f"{sdist.filename} has been building for {target} for {age:.0f} s, longer than this proxy keeps "
            "clients waiting ([builder] max_wait); it goes on building: try again later, or build ahead "
            "(wheelfarm build ahead)"
        )
        response = error_response(503, text)
    else:
        retry = str(waiting.retry_after_for(age))
        text = f"building {sdist.filename} for {target} ({age:.0f} s so far); retry in {retry} s"
        response = error_response(503, text)
        response.headers["Retry-After"] = retry
    response.headers["Cache-Control"] = "no-store"
    return response


def _job(project: str, sdist: DistFile, target: Target) -> BuildJob:
    try:
        _, version = parse_sdist_filename(sdist.filename)
    except InvalidSdistFilename:
        raise NotFound(f"{sdist.filename} is not an sdist we can build") from None
    assert sdist.sha256 is not None
    return BuildJob(project, str(version), sdist.filename, sdist.sha256, sdist.url, target)


def _answer(request: web.Request, services: Services, record: BuildRecord) -> web.StreamResponse:
    folder = f"built/{record.key.sdist_sha256}/{record.key.target}/"
    if record.state is BuildState.FAILED:
        log_url = str(request.url.join(URL("../../../../" + folder + "build.log")))
        summary = f"wheel build failed in {record.phase.value if record.phase else '?'}: {record.error}"
        error = BuildFailedError(f"{summary}\nbuild log: {log_url}")
        # pip shows the reason phrase of a 4xx; keep it one latin-1 line (RFC 9112 section 4).
        error.reason = plain_text(f"{summary} (log: {log_url})".replace("\n", " "))[:300]
        error.reason = error.reason.encode("latin-1", "replace").decode("latin-1")
        raise error
    assert services.builder is not None
    wheel = services.builder.artifact(record.key, record.wheel_filename)
    if wheel is None:
        raise NotFound(f"the wheel built from {record.sdist_filename} is gone from the store")
    headers = {
        "Content-Type": "application/octet-stream",
        "Cache-Control": IMMUTABLE,
        # pip names the downloaded file after Content-Disposition (RFC 6266): the wheel's real name.
        "Content-Disposition": f'attachment; filename="{record.wheel_filename}"',
        "X-Wheelfarm-Built-From": record.sdist_filename,
    }
    request[CACHE_OUTCOME] = request.get(CACHE_OUTCOME, "built")
    return web.FileResponse(wheel, chunk_size=CHUNK, headers=headers)


async def built(request: web.Request) -> web.StreamResponse:
    return serve_built(request, request.app[SERVICES])


def serve_built(request: web.Request, services: Services) -> web.StreamResponse:
    """A build's wheel, metadata, log or provenance (also served by the admin listener, for its links)."""
    builder = _builder(services)
    sha, target, filename = (request.match_info[k] for k in ("sdist", "target", "filename"))
    if not _SHA256.match(sha) or not _BUILT_FILES.match(filename):
        raise NotFound(f"no such built file: {request.path}")
    record = builder.record(BuildKey(sha, target))
    if record is None:
        raise NotFound(f"no build of {sha} for {target}")
    if filename.endswith((".whl", ".whl.metadata")) and not filename.startswith(record.wheel_filename or "-"):
        raise NotFound(f"the build of {record.sdist_filename} for {target} made no {filename}")
    path = builder.artifact(record.key, filename)
    if path is None:
        raise NotFound(f"the build of {record.sdist_filename} for {target} has no {filename}")
    content_type = {
        "build.log": "text/plain; charset=utf-8",
        "provenance.json": "application/json",
    }.get(
        filename,
        "text/plain; charset=utf-8" if filename.endswith(".metadata") else "application/octet-stream",
    )
    request[CACHE_OUTCOME] = "hit"
    headers = {"Content-Type": content_type, "Cache-Control": IMMUTABLE}
    return web.FileResponse(path, chunk_size=CHUNK, headers=headers)
