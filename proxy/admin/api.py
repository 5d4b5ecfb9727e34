"""The admin API (JSON) and page, under one prefix: inspect the cache and the builds, and steer them.

Off unless ``[admin] enabled``. Reads are open to whoever reaches the admin listener (bind it to its own
address with ``[admin] listen``); every mutation needs ``Authorization: Bearer <[admin] token>`` and is
refused (401, nothing changed) without it.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from packaging.requirements import Requirement

from builder.jobs import Artifact, BuildJob, BuildKey, BuildProgress, BuildRecord, BuildState
from builder.tags import InvalidTarget, Target
from proxy.builds.buildahead import BadRequirement, applies_to, choose_sdist, parse_requirements
from proxy.builds.service import BuildCounts, BuilderView, BuildService, NotOffered, ServiceState
from proxy.errors import BadRequest, NotFound, WheelfarmError
from proxy.index.model import file_key
from proxy.index.names import InvalidProjectName, normalize
from proxy.index.urls import BUILT_BY_NAME_ROUTE, BUILT_ROUTE, built_path
from proxy.provenance.attest import KEYS_PATH
from proxy.redact import redact
from proxy.web.builds import serve_built, serve_built_by_name
from proxy.web.security import secure_admin
from proxy.web.services import SERVICES, RequestOutcome, Services

MAIN_APP = web.AppKey("main_app", web.Application)
PAGE = Path(__file__).with_name("admin.html")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Unauthorized(WheelfarmError):
    status = 401


def services_of(request: web.Request) -> Services:
    return request.app[MAIN_APP][SERVICES]


def reply(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS),
        status=status,
        content_type="application/json",
    )


@web.middleware
async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method in ("GET", "HEAD"):
        return await handler(request)
    token = services_of(request).settings.admin_token
    given = request.headers.get("Authorization", "")
    if not token:
        raise Unauthorized("admin changes are disabled: set [admin] token to allow them")
    # surrogateescape: a header that is not UTF-8 arrives with its bytes escaped, and is simply wrong
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), f"Bearer {token}".encode()):
        raise Unauthorized("a valid 'Authorization: Bearer <token>' header is needed for admin changes")
    return await handler(request)


async def body_of(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def record_view(record: BuildRecord) -> dict[str, Any]:
    view: dict[str, Any] = {
        "key": _key_view(record.key),
        "project": record.project,
        "version": record.version,
        "sdist": record.sdist_filename,
        "state": record.state.value,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "duration_seconds": round(record.duration, 3),  # the build itself
        "queued_seconds": round(record.queued_seconds, 3),  # before it: waiting for a worker
        "orphaned_since": record.orphaned_since,
    }
    if record.made_by:
        view["made_by"] = record.made_by
    if record.log_sha256:
        view["log"] = "/" + built_path(record, Artifact.LOG)
    if record.wheel_filename:
        view.update(
            wheel=record.wheel_filename,
            wheel_sha256=record.wheel_sha256,
            wheel_size=record.wheel_size,
            url="/" + built_path(record, Artifact.WHEEL),
            provenance="/" + built_path(record, Artifact.PROVENANCE),
            reproduced=record.reproduced,  # a second build's verdict (None: not checked yet)
        )
        if record.attestation_sha256:
            view["attestation"] = "/" + built_path(record, Artifact.ATTESTATION)
        if record.reproduced is not None and record.reproduced_by:
            view["reproduced_by"] = record.reproduced_by  # the builder that made the second build
        if record.reproduced is False:
            view.update(differing=list(record.differing), reproduction_note=record.reproduction_note)
    if record.error:
        view.update(error=record.error, phase=record.phase.value if record.phase else "")
    return view


def progress_view(progress: BuildProgress, now: float) -> dict[str, Any]:
    job = progress.job
    return {
        "key": _key_view(job.key),
        "project": job.project,
        "version": job.version,
        "sdist": job.sdist_filename,
        "state": progress.state.value,
        "queued_at": progress.queued_at,
        "elapsed_seconds": round(now - (progress.started_at or progress.queued_at), 3),
    }


def counts_view(counts: BuildCounts) -> dict[str, int]:
    return {
        "queued": counts.queued,
        "running": counts.running,
        "done": counts.done,
        "failed": counts.failed,
        "orphaned": counts.orphaned,
    }


# What the hit ratio counts: requests answered from the page or file cache, or from upstream (not builds).
CACHE_LOOKUPS = (RequestOutcome.HIT, RequestOutcome.MISS, RequestOutcome.STALE, RequestOutcome.REVALIDATED)


async def summary(request: web.Request) -> web.Response:
    services = services_of(request)
    pages, page_bytes = await services.page_cache.store_stats()
    counts = await services.builds.counts()
    status = (await services.builds.capabilities()).status
    lookups_counts = services.metrics.cache_counts()
    lookups = sum(lookups_counts.get(o.value, 0) for o in CACHE_LOOKUPS)
    ratio = round(lookups_counts.get(RequestOutcome.HIT.value, 0) / lookups, 4) if lookups else None
    return reply(
        {
            "pages": {"count": pages, "bytes": page_bytes},
            "files": {
                "count": len(services.files.index),
                "bytes": services.files.index.total_bytes,
                "max_bytes": services.files.max_bytes,
                "evictions": services.files.evictions,
                "quarantined": services.files.counts.quarantined,  # since the proxy started
            },
            "built_wheels": {"count": counts.done, "bytes": counts.built_bytes},
            "builds": counts_view(counts) if status.state is not ServiceState.OFF else {},
            "cache": {**lookups_counts, "hit_ratio": ratio},
            "builder": status.view(),
            "memory": {
                **services.page_cache.sizes(),
                "quarantined": len(services.policy),
                "rendered": len(services.overlay),
            },
            "upstream": redact(services.settings.upstream_simple_url),
            # The key built wheels' provenance is signed with (proxy/provenance); None: no builds here.
            "signing": {"keyid": services.signing.keyid, "keys": KEYS_PATH} if services.signing else None,
            "reproducibility": {
                "reproduced": counts.reproduced,
                "not_reproduced": counts.not_reproduced,
                "unchecked": counts.done - counts.reproduced - counts.not_reproduced,
                "share": round(counts.reproduced / judged, 4)
                if (judged := counts.reproduced + counts.not_reproduced)
                else None,
            },
        }
    )


async def builds(request: web.Request) -> web.Response:
    service = await builds_of(services_of(request))
    now = time.time()
    return reply(
        {
            "builds": counts_view(await service.counts()),
            "active": [progress_view(progress, now) for progress in await service.active()],
            "finished": [record_view(r) for r in await service.records()],
        }
    )


async def builders(request: web.Request) -> web.Response:
    """Every builder serving the farm: what it builds, when it was last heard from, what it holds now."""
    service = services_of(request).builds
    return reply({"builders": [builder_view(b) for b in await service.builders()]})


def builder_view(builder: BuilderView) -> dict[str, Any]:
    offer = builder.offer
    return {
        "id": builder.id,
        "live": builder.live,
        "last_seen": builder.last_seen,
        "flagged": builder.flagged or None,
        "jobs": list(builder.jobs),
        "builds": None
        if offer is None
        else {
            "platform": f"{offer.family} {offer.arch}",
            "pythons": [f"3.{minor}" for minor in offer.pythons],
            "targets": list(offer.patterns),
        },
    }


async def project(request: web.Request) -> web.Response:
    services = services_of(request)
    name = _project(request)
    result = await services.pages.project(name)
    cached = []
    for dist in result.page.files:
        key = file_key(dist)
        size = services.files.index.size(key)
        cached.append({"filename": dist.filename, "key": key, "cached": size is not None, "bytes": size})
    records = await services.builds.records(name)
    by_target: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_target.setdefault(record.key.target, []).append(record_view(record))
    return reply(
        {
            "project": name,
            "page": {
                "fetched_at": result.fetched_at,
                "serial": result.page.last_serial,
                "cache": result.outcome.value,
                "files": len(result.page.files),
            },
            "files": cached,
            "builds": by_target,
        }
    )


async def purge(request: web.Request) -> web.Response:
    """Forget the project's page; with {"files": true} also its cached files and built wheels."""
    services = services_of(request)
    name = _project(request)
    body = await body_of(request)
    files_too = body.get("files", False)
    if not isinstance(files_too, bool):
        raise BadRequest("'files' must be true or false")
    removed: dict[str, Any] = {"page": False, "files": 0, "builds": 0}
    if files_too:
        try:
            page = (await services.pages.project(name)).page
            removed["files"] = await services.files.evict([file_key(d) for d in page.files])
        except NotFound:
            pass
        for record in await services.builds.records(name):
            removed["builds"] += int(await services.builds.forget(record.key) is not None)
    removed["page"] = await services.page_cache.forget(name)
    return reply({"project": name, "removed": removed})


async def delete_build(request: web.Request) -> web.Response:
    service = await builds_of(services_of(request))
    key = _key(request)
    if await service.forget(key) is None:
        raise NotFound(f"no build of {key.sdist_sha256} for {key.target}")
    return reply({"deleted": {"sdist_sha256": key.sdist_sha256, "target": key.target}})


async def retry_build(request: web.Request) -> web.Response:
    service = await builds_of(services_of(request))
    key = _key(request)
    record = await service.record(key, final=False)
    if record is None:
        raise NotFound(f"no finished build of {key.sdist_sha256} for {key.target}")
    if record.state is not BuildState.FAILED:
        raise BadRequest(
            f"the build of {record.sdist_filename} for {key.target} did not fail; delete it instead"
        )
    await service.forget(key)
    return reply(
        {"retry": "the next request for the pending link builds again", "sdist": record.sdist_filename}
    )


async def build_ahead(request: web.Request) -> web.Response:
    """Start builds for requirements (["name==version", ...] or a requirements file's text) and a target."""
    services = services_of(request)
    service = await builds_of(services)
    body = await body_of(request)
    try:
        target = Target.parse(str(body.get("target", "")))
    except InvalidTarget as exc:
        raise BadRequest(f"'target': {exc}") from None
    if not (await service.capabilities()).serves(target):
        raise BadRequest(f"'target': no builder here builds for {target}")
    lines = body.get("requirements", [])
    if isinstance(body.get("requirements_txt"), str):
        lines = [*lines, *body["requirements_txt"].splitlines()]
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise BadRequest("'requirements' must be a list of strings like 'name==1.0'")
    try:
        requirements = parse_requirements(lines)
    except BadRequirement as exc:
        raise BadRequest(f"'requirements': {exc}") from None
    if not requirements:
        raise BadRequest("'requirements' names nothing to build")
    started = [await _start_one(services, service, requirement, target) for requirement in requirements]
    return reply({"target": target.id, "builds": started}, status=202)


async def _start_one(
    services: Services, service: BuildService, requirement: Requirement, target: Target
) -> dict[str, Any]:
    name = normalize(requirement.name)
    entry: dict[str, Any] = {"requirement": str(requirement)}
    if not applies_to(requirement, target):
        return {**entry, "state": f"its environment marker excludes {target}"}
    try:
        page = (await services.pages.project(name)).page
    except NotFound:
        return {**entry, "state": "no such project upstream"}
    chosen = choose_sdist(page, requirement, target)
    if chosen is None:
        return {**entry, "state": "no sdist matches: no matching release lacks a wheel for the target"}
    version, sdist = chosen.version, chosen.sdist
    assert sdist.sha256 is not None
    job = BuildJob(name, str(version), sdist.filename, sdist.sha256, sdist.url, target)
    try:
        submitted = await service.submit(job)
    except NotOffered:
        return {**entry, "state": "not allowed by the builder's policy"}
    state = submitted.state.value if isinstance(submitted, BuildRecord) else "started"
    return {**entry, "state": state, "sdist": sdist.filename, "key": _key_view(job.key)}


async def evict(request: web.Request) -> web.Response:
    services = services_of(request)
    body = await body_of(request)
    seconds = body.get("unused_for_seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise BadRequest("'unused_for_seconds' must be a number of seconds (0 or more)")
    removed = await services.files.evict_unused_since(float(seconds))
    return reply({"evicted_files": removed})


async def verify_start(request: web.Request) -> web.Response:
    """Rehash every cached file (corrupt ones are quarantined); 202 with the run's report so far. A run
    already going on is joined, not doubled."""
    return reply({"verify": services_of(request).verifier.start().view()}, status=202)


async def verify_report(request: web.Request) -> web.Response:
    """The report of the running or last verify run (null before the first)."""
    last = services_of(request).verifier.last
    return reply({"verify": last.view() if last is not None else None})


async def built_file(request: web.Request) -> web.StreamResponse:
    return await serve_built(request, services_of(request))


async def built_file_by_name(request: web.Request) -> web.StreamResponse:
    return await serve_built_by_name(request, services_of(request))


async def builds_of(services: Services) -> BuildService:
    """The build service, unless this proxy builds nothing (then a 404 saying so)."""
    status = (await services.builds.capabilities()).status
    if status.state is ServiceState.OFF:
        raise NotFound(status.reason)
    return services.builds


async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(
        PAGE, headers={"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"}
    )


def _project(request: web.Request) -> Any:
    try:
        return normalize(request.match_info["project"])
    except InvalidProjectName as exc:
        raise BadRequest(str(exc)) from None


def _key(request: web.Request) -> BuildKey:
    sha, target = request.match_info["sdist"], request.match_info["target"]
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise BadRequest(f"not a sha256: {sha!r}")
    try:
        Target.parse(target)
    except InvalidTarget as exc:
        raise BadRequest(str(exc)) from None
    return BuildKey(sha, target)


def _key_view(key: BuildKey) -> dict[str, str]:
    return {"sdist_sha256": key.sdist_sha256, "target": key.target}


def create_admin_app(main: web.Application, middlewares: list[Any], *, standalone: bool) -> web.Application:
    admin = web.Application(middlewares=[*middlewares, require_token], client_max_size=1 << 20)
    admin[MAIN_APP] = main
    secure_admin(admin, PAGE)
    admin.router.add_get("/", page)
    admin.router.add_get("/api/summary", summary)
    admin.router.add_get("/api/builds", builds)
    admin.router.add_get("/api/builders", builders)
    admin.router.add_get("/api/projects/{project}", project)
    admin.router.add_post("/api/projects/{project}/purge", purge)
    admin.router.add_delete("/api/builds/{sdist}/{target}", delete_build)
    admin.router.add_post("/api/builds/{sdist}/{target}/retry", retry_build)
    admin.router.add_post("/api/build-ahead", build_ahead)
    admin.router.add_post("/api/evict", evict)
    admin.router.add_get("/api/verify", verify_report)
    admin.router.add_post("/api/verify", verify_start)
    if standalone:
        # The API links logs and wheels as /built/...: on a listener of its own, admin serves them too.
        admin.router.add_get(BUILT_ROUTE, built_file)
        admin.router.add_get(BUILT_BY_NAME_ROUTE, built_file_by_name)
    return admin
