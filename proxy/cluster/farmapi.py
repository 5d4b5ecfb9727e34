"""The HTTP API remote builders pull their jobs through (``wheelfarm builder run --farm URL``).

Every call carries a builder token (``Authorization: Bearer wfb_...``, made by ``wheelfarm db token add``);
a builder holds nothing else: no database credentials, no admin token. It

    POST /cluster/api/claim                         {"offer"}: 200 {"job", "sdist_url", "lease_seconds"}
                                                    or 204 after a long poll of up to 20 s (its heartbeat too)
    POST /cluster/api/jobs/{sdist}/{target}/lease   renews its lease: 204, or 409 when it lost the job
    POST /cluster/api/jobs/{sdist}/{target}/result  multipart: "report" (the worker's JSON report), "log"
                                                    and, when the build succeeded, "wheel"

The farm treats an upload as hostile: sizes are capped while it streams in, the wheel is inspected as a
local build's is (project, version, tags for the job's target, zip structure, RECORD), its METADATA is read
from the wheel itself, and a refused upload puts the job back in the queue and flags the builder.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiofiles
import orjson
from aiohttp import BodyPartReader, web

from builder.jobs import BuildKey, InvalidBuildKey, TargetOffer, public_url
from builder.protocol import WorkerReport
from proxy.cluster.remotebuilders import BuilderFlagged, NotHeld, RemoteBuilders, UploadRefused

CLUSTER = web.AppKey("cluster", RemoteBuilders)
UPLOADS = web.AppKey("uploads", Path)  # where uploads are streamed to before they are checked
LONG_POLL_SECONDS = 20.0
REPORT_BYTES = 1 << 20
_WHEEL_NAME = re.compile(r"[A-Za-z0-9_.+!-]{1,200}\.whl\Z")
_PATTERN = re.compile(r"[a-z0-9_*?-]{1,64}")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_routes(app: web.Application) -> None:
    app.router.add_post("/cluster/api/claim", claim)
    app.router.add_post("/cluster/api/jobs/{sdist}/{target}/lease", lease)
    app.router.add_post("/cluster/api/jobs/{sdist}/{target}/result", result)


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message + "\n", headers={"Cache-Control": "no-store"})


async def _builder(request: web.Request) -> tuple[RemoteBuilders, str]:
    cluster = request.app[CLUSTER]
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    builder = (
        await cluster.builder_of(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
    )
    if builder is None:
        raise web.HTTPUnauthorized(
            text="a valid builder token is required (Authorization: Bearer ...)\n",
            headers={"WWW-Authenticate": 'Bearer realm="wheelfarm builders"'},
        )
    return cluster, builder


def _key(request: web.Request) -> BuildKey:
    try:
        return BuildKey.checked(request.match_info["sdist"], request.match_info["target"])
    except InvalidBuildKey as exc:
        raise web.HTTPNotFound(text=f"{exc}\n") from None


def _offer(data: Any) -> TargetOffer:
    try:
        raw = data["offer"]
        offer = TargetOffer(
            family=str(raw["family"]),
            arch=str(raw["arch"]),
            pythons=tuple(int(p) for p in raw["pythons"]),
            patterns=tuple(str(p) for p in raw.get("patterns", ["*"])),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise web.HTTPBadRequest(text=f"the claim needs an offer (family, arch, pythons): {exc}\n") from None
    if offer.family not in ("manylinux", "musllinux") or not re.fullmatch(r"[a-z0-9_]{1,32}", offer.arch):
        raise web.HTTPBadRequest(text="the offer names no known platform family and architecture\n")
    # Bounded: every farm process reads every offer, and pages ask each one about targets.
    if not 0 < len(offer.pythons) <= 32 or len(set(offer.pythons)) != len(offer.pythons):
        raise web.HTTPBadRequest(text="the offer's pythons: 1 to 32 different minor versions of CPython 3\n")
    if not all(8 <= minor <= 40 for minor in offer.pythons):
        raise web.HTTPBadRequest(text="the offer's pythons are minor versions of CPython 3 from 8 to 40\n")
    if not 0 < len(offer.patterns) <= 16 or not all(_PATTERN.fullmatch(p) for p in offer.patterns):
        raise web.HTTPBadRequest(text="the offer's targets: 1 to 16 patterns of [a-z0-9_*?-], 64 at most\n")
    return offer


async def claim(request: web.Request) -> web.StreamResponse:
    cluster, builder = await _builder(request)
    try:
        offer = _offer(orjson.loads(await request.content.read(REPORT_BYTES)))
    except orjson.JSONDecodeError:
        raise web.HTTPBadRequest(text="the claim is not JSON\n") from None
    try:
        job = await cluster.claim_for(builder, offer, LONG_POLL_SECONDS)
    except BuilderFlagged as exc:
        return _text(403, str(exc))
    if job is None:
        return web.Response(status=204, headers={"Cache-Control": "no-store"})
    sdist_url = f"/files/{job.project}/{job.sdist_sha256}/{job.sdist_filename}"
    body = {
        # Without the upstream's credentials, should its URL carry them (RFC 3986 userinfo): the builder
        # takes the sdist from the farm (sdist_url below), and the farm signs the job's sdist, not its word.
        "job": orjson.loads(dataclasses.replace(job, sdist_url=public_url(job.sdist_url)).to_json()),
        "sdist_url": sdist_url,
        "lease_seconds": cluster.lease_seconds,
        # The limits the farm inspects uploads against: the builder builds within the same ones.
        "limits": dataclasses.asdict(cluster.limits),
    }
    return web.json_response(body, dumps=lambda v: orjson.dumps(v).decode())


async def lease(request: web.Request) -> web.StreamResponse:
    cluster, builder = await _builder(request)
    if await cluster.renew_for(builder, _key(request)):
        return web.Response(status=204)
    return _text(409, "this builder does not hold that job any more")


async def result(request: web.Request) -> web.StreamResponse:
    cluster, builder = await _builder(request)
    key = _key(request)
    if not await cluster.holds(builder, key):  # before a byte of the upload is read
        return _text(409, f"{builder} does not hold the build of {key}")
    folder = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="upload-", dir=request.app[UPLOADS]))
    try:
        report, wheel, log_file = await _read_upload(request, folder, cluster)
        try:
            record = await cluster.accept(builder, key, report, wheel, log_file)
        except NotHeld as exc:
            return _text(409, str(exc))
        except UploadRefused as exc:
            return _text(422, str(exc))
        return web.json_response({"state": record.state.value, "wheel": record.wheel_filename})
    finally:
        await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)


async def _read_upload(
    request: web.Request, folder: Path, cluster: RemoteBuilders
) -> tuple[WorkerReport, Path | None, Path | None]:
    limits = cluster.limits
    report: WorkerReport | None = None
    parts: dict[str, Path] = {}
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if (
            not isinstance(part, BodyPartReader)
            or part.name not in ("report", "log", "wheel")
            or part.name in parts
        ):
            raise web.HTTPBadRequest(text="the upload has the parts report, log and wheel, each once\n")
        if part.name == "report":
            raw = await _capped(part, REPORT_BYTES)
            try:
                report = _checked_report(WorkerReport.from_json(raw))
            except (ValueError, TypeError) as exc:
                raise web.HTTPBadRequest(text=f"the report is not a worker report: {exc}\n") from None
            parts["report"] = folder
            continue
        if part.name == "wheel":
            if report is None or not _WHEEL_NAME.match(report.wheel_filename):
                raise web.HTTPBadRequest(
                    text="the report, naming a plain wheel file name, comes before the wheel\n"
                )
            path = folder / report.wheel_filename
            cap = limits.output_bytes
        else:
            path, cap = folder / "build.log", limits.log_bytes + (1 << 20)
        await _save(part, path, cap)
        parts[part.name] = path
    if report is None:
        raise web.HTTPBadRequest(text="the upload has no report\n")
    return report, parts.get("wheel"), parts.get("log")


def _checked_report(report: WorkerReport) -> WorkerReport:
    """Each field of the type the farm uses it as: a builder's JSON is as hostile as an sdist."""
    expected: dict[str, type | tuple[type, ...]] = {
        "ok": bool, "error": str, "phase": str, "wheel_filename": str, "wheel_sha256": str, "wheel_size": int,
        "build_seconds": (int, float), "provenance": dict,
    }  # fmt: skip
    for field, kind in expected.items():
        if not isinstance(getattr(report, field), kind):
            raise TypeError(f"{field} has the wrong type")
    if not 0 <= report.build_seconds < 7 * 86400:
        raise ValueError("build_seconds is out of range")
    return report


async def _capped(part: BodyPartReader, cap: int) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk(1 << 16):
        data += chunk
        if len(data) > cap:
            raise web.HTTPRequestEntityTooLarge(max_size=cap, actual_size=len(data))
    return bytes(data)


async def _save(part: BodyPartReader, path: Path, cap: int) -> None:
    written = 0
    async with aiofiles.open(path, "wb") as out:
        while chunk := await part.read_chunk(1 << 20):
            written += len(chunk)
            if written > cap:
                raise web.HTTPRequestEntityTooLarge(max_size=cap, actual_size=written)
            await out.write(chunk)
