"""Build-pending links and what builds left.

``build/<target>/<project>/<sdist sha256>/<name>.whl`` starts (or joins) the build and holds the request
while it runs, never sending headers before the wheel is ready (pip's read timeout is 15 s): 200 with the
wheel when built, 503 with Retry-After while building (pip honours it; uv retries anyway), 422 naming the
failure and its log when the build failed. ``built/<sdist sha256>/<target>/<sha256>/<filename>`` serves the
wheel, its ``.metadata``, the build log and the provenance by their own sha256 (proxy/index/urls.py), so
each may be cached for ever; ``built/<sdist sha256>/<target>/<filename>``, the layout before, still answers
(for lock files that pinned it) with whatever the build of that key left now, never to be cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiohttp import web
from packaging.utils import InvalidSdistFilename, parse_sdist_filename
from yarl import URL

from builder.jobs import (
    Artifact,
    BuildJob,
    BuildKey,
    BuildRecord,
    BuildState,
    InvalidBuildKey,
    artifact_filename,
    artifact_sha256,
    is_sha256,
)
from builder.tags import InvalidTarget, Target
from proxy.builds.service import NotOffered
from proxy.builds.waiting import Waiting
from proxy.errors import BadRequest, NotFound, WheelfarmError
from proxy.index.model import DistFile
from proxy.index.urls import built_address, built_path
from proxy.web.files import CHUNK, IMMUTABLE
from proxy.web.pages import project_name
from proxy.web.security import error_response, plain_text
from proxy.web.services import CACHE_OUTCOME, SERVICES, RequestOutcome, Services

_CONTENT_TYPES = {
    Artifact.WHEEL: "application/octet-stream",
    Artifact.METADATA: "text/plain; charset=utf-8",
    Artifact.LOG: "text/plain; charset=utf-8",
    Artifact.PROVENANCE: "application/json",
    Artifact.ATTESTATION: "application/json",
    Artifact.PEP740: "application/json",
}


class BuildFailedError(WheelfarmError):
    status = 422  # a 4xx: pip and uv do not retry it, and pip prints the reason phrase


class BuildNotOffered(NotFound):
    pass


async def pending(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    info = request.match_info
    try:
        target = Target.parse(info["target"])
    except InvalidTarget as exc:
        raise BadRequest(str(exc)) from None
    project = project_name(info["project"])
    sha = info["sdist"]
    if not is_sha256(sha) or project != info["project"]:
        raise NotFound(f"no such build link: {request.path}")
    page = (await services.pages.project(project)).page
    if page.quarantined:
        raise BuildNotOffered(f"{project} is quarantined upstream (PEP 792): no files, no builds")
    sdist = page.file_by_key(sha)
    if sdist is None or sdist.filename.endswith(".whl"):
        raise NotFound(f"{project} lists no sdist with sha256 {sha} upstream")
    key = BuildKey(sha, target.id)
    builds = services.builds
    record = await builds.record(key)
    if record is None:
        # A link from a page cached before a restart, followed during the start-up self-check: wait for it.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(services.settings.builder_hold_seconds):
                await builds.wait_ready()
        try:
            submitted = await builds.submit(_job(project, sdist, target))
        except NotOffered as exc:
            raise BuildNotOffered(str(exc)) from None
        if isinstance(submitted, BuildRecord):
            record = submitted
        else:
            request[CACHE_OUTCOME] = RequestOutcome.BUILDING
            waiting = _waiting(services)
            age = max(0.0, time.time() - submitted.queued_at)
            if not waiting.gave_up(age):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(waiting.hold(request.headers.get("User-Agent"))):
                        record = await builds.wait(key)
            if record is None:
                return _still_building(waiting, max(0.0, time.time() - submitted.queued_at), sdist, target)
    return await _answer(request, services, record)


def _waiting(services: Services) -> Waiting:
    settings = services.settings
    return Waiting(
        hold_seconds=settings.builder_hold_seconds,
        uv_hold_seconds=settings.builder_uv_hold_seconds,
        retry_after=settings.builder_retry_after,
        max_wait=settings.builder_max_wait,
    )


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


async def _answer(request: web.Request, services: Services, record: BuildRecord) -> web.StreamResponse:
    if record.state is BuildState.FAILED:
        log_url = str(request.url.join(URL("../../../../" + built_path(record, Artifact.LOG))))
        summary = f"wheel build failed in {record.phase.value if record.phase else '?'}: {record.error}"
        error = BuildFailedError(f"{summary}\nbuild log: {log_url}")
        # pip shows the reason phrase of a 4xx; keep it one latin-1 line (RFC 9112 section 4).
        error.reason = plain_text(f"{summary} (log: {log_url})".replace("\n", " "))[:300]
        error.reason = error.reason.encode("latin-1", "replace").decode("latin-1")
        raise error
    request[CACHE_OUTCOME] = request.get(CACHE_OUTCOME, RequestOutcome.BUILT)
    # pip names the downloaded file after Content-Disposition (RFC 6266): the wheel's real name.
    disposition = {"Content-Disposition": f'attachment; filename="{record.wheel_filename}"'}
    headers = {**disposition, "X-Wheelfarm-Built-From": record.sdist_filename}
    return await _artifact_response(request, services, record, Artifact.WHEEL, IMMUTABLE, headers)


async def built(request: web.Request) -> web.StreamResponse:
    return await serve_built(request, request.app[SERVICES])


async def serve_built(request: web.Request, services: Services) -> web.StreamResponse:
    """What a build left, by its sha256 (also served by the admin listener, for its links)."""
    info = request.match_info
    record = await _record_of(request, services)
    sha, filename = info["sha256"], info["filename"]
    for artifact in Artifact:
        if sha and built_address(record, artifact) == sha and artifact_filename(record, artifact) == filename:
            request[CACHE_OUTCOME] = RequestOutcome.HIT
            return await _artifact_response(request, services, record, artifact, IMMUTABLE)
    raise NotFound(f"the build of {record.sdist_filename} for {record.key.target} left no {filename} {sha}")


async def built_by_name(request: web.Request) -> web.StreamResponse:
    return await serve_built_by_name(request, request.app[SERVICES])


async def serve_built_by_name(request: web.Request, services: Services) -> web.StreamResponse:
    """The layout before content addresses: what the build of the key left now (a retry changes it)."""
    record = await _record_of(request, services)
    filename = request.match_info["filename"]
    for artifact in Artifact:
        if artifact_filename(record, artifact) == filename and artifact_sha256(record, artifact):
            request[CACHE_OUTCOME] = RequestOutcome.HIT
            return await _artifact_response(request, services, record, artifact, "no-cache")
    raise NotFound(f"the build of {record.sdist_filename} for {record.key.target} made no {filename}")


async def _record_of(request: web.Request, services: Services) -> BuildRecord:
    sha, target = request.match_info["sdist"], request.match_info["target"]
    try:
        key = BuildKey.checked(sha, target)
    except InvalidBuildKey:
        raise NotFound(f"no such built file: {request.path}") from None
    record = await services.builds.record(key, final=False)
    if record is None:
        raise NotFound(f"no build of {sha} for {target}")
    return record


async def attestation(request: web.Request) -> web.StreamResponse:
    """The signed attestation of the built wheel with the sha256 asked (``wheelfarm verify`` of a wheel)."""
    services = request.app[SERVICES]
    sha = request.match_info["sha256"]
    if not is_sha256(sha):
        raise NotFound(f"{sha[:80]!r} is not a wheel's sha256 (64 hex digits)")
    of = request.query.get("of", "wheel")
    if of not in ("wheel", "metadata"):
        raise BadRequest(f"?of= takes wheel or metadata, not {of[:40]!r}")
    record = await services.builds.by_wheel(sha, metadata=of == "metadata")
    if record is None or not record.attestation_sha256:
        raise NotFound(f"no wheel built here has a {of} with sha256 {sha}, or its build left no attestation")
    extra = {"X-Wheelfarm-Wheel": record.wheel_filename}
    return await _artifact_response(request, services, record, Artifact.ATTESTATION, "no-cache", extra)


async def _artifact_response(
    request: web.Request,
    services: Services,
    record: BuildRecord,
    artifact: Artifact,
    cache_control: str,
    extra: dict[str, str] | None = None,
) -> web.StreamResponse:
    blob = await services.builds.artifact(record, artifact)
    if blob is None:
        raise NotFound(f"the {artifact.value} of the build of {record.sdist_filename} is gone from the store")
    headers = {"Content-Type": _CONTENT_TYPES[artifact], "Cache-Control": cache_control, **(extra or {})}
    if blob.path is not None:
        return web.FileResponse(blob.path, chunk_size=CHUNK, headers=headers)
    response = web.StreamResponse(headers={**headers, "Content-Length": str(blob.size)})
    await response.prepare(request)
    async for chunk in services.builds.chunks(blob):
        await response.write(chunk)
    await response.write_eof()
    return response
