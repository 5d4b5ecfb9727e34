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
from builder.loop import BuilderLoop
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
    """The job source of this host's builder loop (builder/loop.py): the farm's claim, lease and result
    endpoints are the loop's claim, renew and keep."""

    def __init__(self, farm: str, token: str, settings: HostSettings) -> None:
        self.farm = farm.rstrip("/")
        self._token = token
        self.host = BuildHost(settings)
        self._sdists = settings.work_root / "sdists"
        self._http: aiohttp.ClientSession | None = None
        self._sdist_urls: dict[BuildKey, str] = {}
        self._lease = MIN_LEASE_SECONDS

    async def run(self, stop: asyncio.Event) -> int:
        reason = await self.host.start()
        if reason is not None:
            log.error("builder_unavailable", reason=reason)
            return 1
        log.info("builder_ready", farm=self.farm, offer=_offer_json(self.host.offer))
        await asyncio.to_thread(self._sdists.mkdir, parents=True, exist_ok=True)
        headers = {"Authorization": f"Bearer {self._token}", "User-Agent": "wheelfarm-builder"}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as self._http:
            # As many claims as slots: a job waiting here for a slot is one another builder could build.
            building = asyncio.create_task(BuilderLoop(self.host, self, self.host.settings.workers).run())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait([building, stopping], return_when=asyncio.FIRST_COMPLETED)
            for task in (building, stopping):
                task.cancel()
            await asyncio.gather(building, stopping, return_exceptions=True)
            if (
                building.done()
                and not building.cancelled()
                and isinstance(building.exception(), TokenRefused)
            ):
                log.error("builder_token_refused", farm=self.farm)
                return 3
        return 0

    @property
    def renew_seconds(self) -> float:
        return self._lease / 3

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None, "run() opens the session"
        return self._http

    async def claim(self, offer: TargetOffer) -> BuildJob | None:
        """A job from the farm's long poll; None after a wait when there is none or the farm is in trouble.
        A refused token raises TokenRefused, which ends the builder."""
        try:
            claimed = await self._claim(offer)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("farm_unreachable", error=str(exc))
            await asyncio.sleep(RETRY_SECONDS)
            return None
        except (ValueError, TypeError, KeyError) as exc:
            log.error("farm_answer_refused", error=str(exc)[:300])
            await asyncio.sleep(RETRY_SECONDS)
            return None
        if claimed is None:
            return None
        job, self._sdist_urls[claimed[0].key], self._lease = claimed
        log.info("build_claimed", project=job.project, version=job.version, target=job.target.id)
        return job

    async def _claim(self, offer: TargetOffer) -> tuple[BuildJob, str, float] | None:
        async with self.http.post(
            f"{self.farm}/cluster/api/claim", json={"offer": _offer_json(offer)}
        ) as answer:
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

    def _sdist_path(self, job: BuildJob) -> Path:
        return self._sdists / f"{job.sdist_sha256}-{job.target.id}"

    async def sdist(self, job: BuildJob) -> Path | WorkerReport:
        path = self._sdist_path(job)
        failure = await self._fetch(job, self._sdist_urls[job.key], path)
        return failure or path

    def started(self, job: BuildJob) -> None:
        pass

    async def keep(self, job: BuildJob, report: WorkerReport, folder: BuildFolder | None) -> None:
        await self._upload(job, report, folder)

    async def abandon(self, job: BuildJob, error: str) -> None:
        # The farm takes the job back when the lease runs out; nothing here to keep.
        log.warning("build_abandoned", project=job.project, target=job.target.id, error=error)

    async def finished(self, job: BuildJob) -> None:
        self._sdist_urls.pop(job.key, None)
        await asyncio.to_thread(self._sdist_path(job).unlink, missing_ok=True)

    async def _fetch(self, job: BuildJob, sdist_url: str, path: Path) -> WorkerReport | None:
        """The sdist from the farm into ``path``, its sha256 checked; a failure report otherwise."""
        digest = hashlib.sha256()
        cap = self.host.settings.limits.output_bytes
        written = 0
        async with self.http.get(
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

    async def renew(self, job: BuildJob) -> bool:
        url = f"{self.farm}/cluster/api/jobs/{job.sdist_sha256}/{job.target.id}/lease"
        try:
            async with self.http.post(url) as answer:
                return answer.status != 409
        except (aiohttp.ClientError, TimeoutError) as exc:  # the lease may still hold: the next try may work
            log.warning("lease_not_renewed", error=str(exc))
            return True

    async def _upload(self, job: BuildJob, report: WorkerReport, folder: BuildFolder | None) -> None:
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
            async with self.http.post(url, data=form) as answer:
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
