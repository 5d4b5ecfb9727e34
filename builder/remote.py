"""``wheelfarm builder run --farm URL``: a builder on any host, pulling jobs from a farm over HTTP.

It holds a builder token (``wheelfarm db add-token NAME`` on the farm's side) and nothing else: no database
credentials, no admin token, no signing key. It announces what it builds (its interpreters and platform),
long-polls the farm for a job, fetches the sdist from the farm's file URL and checks its sha256, builds it
exactly as the farm's own builder does (builder/host.py: the same sandbox, the same inspection), renews its
lease while it builds, and uploads the wheel, the log and the worker's report. The farm checks the upload
again before it records it (proxy/cluster/farmapi.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import signal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import structlog

from builder.host import BuildHost, HostSettings
from builder.jobs import BuildJob, BuildKey, Limits, Phase, TargetOffer
from builder.protocol import WorkerReport
from builder.workdir import BuildFolder

log = structlog.get_logger(__name__)

RETRY_SECONDS = 5.0
MIN_LEASE_SECONDS = 3.0
MAX_CLAIM_BYTES = 1 << 20
SDIST_SECONDS = 900.0
FLAGGED_RETRY_SECONDS = 60.0


class TokenRefused(RuntimeError):
    pass


class RemoteBuilder:
    def __init__(self, farm: str, token: str, settings: HostSettings) -> None:
        self.farm = farm.rstrip("/")
        self._token = token
        self.host = BuildHost(settings)
        self._sdists = settings.work_root / "sdists"

    async def run(self, stop: asyncio.Event) -> int:
        reason = await self.host.start()
        if reason is not None:
            log.error("builder_unavailable", reason=reason)
            return 1
        offer = self.host.offer
        log.info("builder_ready", farm=self.farm, offer=_offer_json(offer))
        await asyncio.to_thread(self._sdists.mkdir, parents=True, exist_ok=True)
        headers = {"Authorization": f"Bearer {self._token}", "User-Agent": "wheelfarm-builder"}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as http:
            slots = [
                asyncio.create_task(self._slot(http, offer), name=f"slot {n}")
                for n in range(self.host.settings.workers)
            ]
            stopping = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([*slots, stopping], return_when=asyncio.FIRST_COMPLETED)
            for task in [*slots, stopping]:
                task.cancel()
            await asyncio.gather(*slots, stopping, return_exceptions=True)
            for task in done:
                if task is not stopping and isinstance(task.exception(), TokenRefused):
                    log.error("builder_token_refused", farm=self.farm)
                    return 3
        return 0

    async def _slot(self, http: aiohttp.ClientSession, offer: TargetOffer) -> None:
        while True:
            try:
                claimed = await self._claim(http, offer)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("farm_unreachable", error=str(exc))
                await asyncio.sleep(RETRY_SECONDS)
                continue
            except (ValueError, TypeError, KeyError) as exc:
                log.error("farm_answer_refused", error=str(exc)[:300])
                await asyncio.sleep(RETRY_SECONDS)
                continue
            if claimed is not None:
                job, sdist_url, lease = claimed
                await self._build(http, job, sdist_url, lease)

    async def _claim(
        self, http: aiohttp.ClientSession, offer: TargetOffer
    ) -> tuple[BuildJob, str, float] | None:
        async with http.post(f"{self.farm}/cluster/api/claim", json={"offer": _offer_json(offer)}) as answer:
            if answer.status == 401:
                raise TokenRefused(await answer.text())
            if answer.status == 403:
                log.error("builder_flagged", reason=(await answer.text()).strip())
                await asyncio.sleep(FLAGGED_RETRY_SECONDS)
                return None
            if answer.status == 204:
                return None
            if answer.status != 200:
                log.warning("claim_failed", status=answer.status, body=(await answer.text())[:300])
                await asyncio.sleep(RETRY_SECONDS)
                return None
            data: dict[str, Any] = orjson.loads(await answer.content.read(MAX_CLAIM_BYTES))
        # The farm's answer is checked too: its key and URL become a path and a request here.
        job = BuildJob.from_json(orjson.dumps(data["job"]))
        BuildKey.checked(job.sdist_sha256, job.target.id)
        sdist_url = str(data["sdist_url"])
        if not sdist_url.startswith("/files/") or ".." in sdist_url.split("/"):
            raise ValueError(f"the farm's sdist URL is not one of its files: {sdist_url[:200]!r}")
        limits = data.get("limits")
        if isinstance(limits, dict) and limits != dataclasses.asdict(self.host.settings.limits):
            # Build within the limits the farm inspects uploads against, or a good build is refused there.
            self.host.settings = dataclasses.replace(self.host.settings, limits=Limits(**limits))
        return job, sdist_url, max(MIN_LEASE_SECONDS, float(data["lease_seconds"]))

    async def _build(self, http: aiohttp.ClientSession, job: BuildJob, sdist_url: str, lease: float) -> None:
        log.info("build_claimed", project=job.project, version=job.version, target=job.target.id)
        renewing = asyncio.create_task(self._renew(http, job, lease))
        sdist = self._sdists / f"{job.sdist_sha256}-{job.target.id}"
        try:
            failure = await self._fetch(http, job, sdist_url, sdist)
            if failure is not None:
                await self._upload(http, job, failure, None)
            else:
                await self.host.build(
                    job, sdist, lambda report, folder: self._upload(http, job, report, folder)
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # The farm takes the job back when the lease runs out; nothing here to keep.
            log.warning("build_abandoned", project=job.project, target=job.target.id, error=str(exc))
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            await asyncio.to_thread(sdist.unlink, missing_ok=True)

    async def _fetch(
        self, http: aiohttp.ClientSession, job: BuildJob, sdist_url: str, path: Path
    ) -> WorkerReport | None:
        """The sdist from the farm into ``path``, its sha256 checked; a failure report otherwise."""
        digest = hashlib.sha256()
        cap = self.host.settings.limits.output_bytes
        written = 0
        async with http.get(
            self.farm + sdist_url, timeout=aiohttp.ClientTimeout(total=SDIST_SECONDS)
        ) as answer:
            if answer.status != 200:  # the farm's trouble, not the package's: another try may work
                return WorkerReport.failure(
                    Phase.INTERNAL, f"the farm answered {answer.status} for the sdist"
                )
            handle = await asyncio.to_thread(path.open, "wb")
            try:
                async for chunk in answer.content.iter_chunked(1 << 20):
                    written += len(chunk)
                    if written > cap:
                        return WorkerReport.failure(Phase.FETCH, f"the sdist is larger than {cap} bytes")
                    digest.update(chunk)
                    await asyncio.to_thread(handle.write, chunk)
            finally:
                await asyncio.to_thread(handle.close)
        if digest.hexdigest() != job.sdist_sha256:
            return WorkerReport.failure(
                Phase.FETCH, f"the sdist's sha256 is {digest.hexdigest()}, not the job's"
            )
        return None

    async def _renew(self, http: aiohttp.ClientSession, job: BuildJob, lease: float) -> None:
        url = f"{self.farm}/cluster/api/jobs/{job.sdist_sha256}/{job.target.id}/lease"
        while True:
            await asyncio.sleep(lease / 3)
            try:
                async with http.post(url) as answer:
                    if answer.status == 409:
                        log.warning("build_lease_lost", project=job.project, target=job.target.id)
                        return
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("lease_not_renewed", error=str(exc))

    async def _upload(
        self, http: aiohttp.ClientSession, job: BuildJob, report: WorkerReport, folder: BuildFolder | None
    ) -> None:
        form = aiohttp.FormData()
        form.add_field("report", report.to_json(), content_type="application/json")
        handles = []
        try:
            if folder is not None and await asyncio.to_thread(folder.log.is_file):
                handles.append(await asyncio.to_thread(folder.log.open, "rb"))
                form.add_field("log", handles[-1], filename="build.log", content_type="text/plain")
            if report.ok and folder is not None:
                wheel = folder.result / report.wheel_filename
                handles.append(await asyncio.to_thread(wheel.open, "rb"))
                form.add_field("wheel", handles[-1], filename=wheel.name, content_type="application/zip")
            url = f"{self.farm}/cluster/api/jobs/{job.sdist_sha256}/{job.target.id}/result"
            async with http.post(url, data=form) as answer:
                text = (await answer.text()).strip()
                log.info("build_uploaded", project=job.project, target=job.target.id, ok=report.ok,
                         status=answer.status, answer=text[:300])  # fmt: skip
        finally:
            for handle in handles:
                handle.close()


def _offer_json(offer: TargetOffer) -> dict[str, Any]:
    return {"family": offer.family, "arch": offer.arch, "pythons": list(offer.pythons),
            "patterns": list(offer.patterns)}  # fmt: skip


def run_remote(farm: str, token: str, settings: HostSettings) -> int:
    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        return await RemoteBuilder(farm, token, settings).run(stop)

    return asyncio.run(main())
