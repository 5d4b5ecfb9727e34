"""The aiohttp application: routes, the error middleware, the access log, and start-up/clean-up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from builder.host import BUILDER_VERSION, BuildHost, HostSettings
from builder.jobs import BuildJob, Limits
from proxy.admin.api import create_admin_app
from proxy.builds.embedded import BuildPolicy, EmbeddedBuildService, SdistFetcher
from proxy.builds.following import FollowingUpstream
from proxy.builds.records import BuildRecords
from proxy.builds.service import BuildService, NoBuilds
from proxy.clock import Clock, SystemClock
from proxy.cluster.farmapi import CLUSTER, UPLOADS
from proxy.cluster.farmapi import add_routes as add_farm_routes
from proxy.cluster.keyring import ClusterKeyring
from proxy.cluster.queue import Pool
from proxy.cluster.remotebuilders import RemoteBuilders
from proxy.cluster.schema import upgrade_database
from proxy.cluster.service import ClusterBuildService
from proxy.errors import NotFound, UpstreamError
from proxy.index.urls import BUILT_BY_NAME_ROUTE, BUILT_ROUTE, FILE_ROUTE, PENDING_ROUTE
from proxy.pages.cache import PageCache
from proxy.pages.overlaid import OverlayPages
from proxy.pages.policy import PolicyPages
from proxy.pages.rootlist import RootList
from proxy.pages.store import PageStore
from proxy.pages.upstream import HttpUpstream, Upstream, host_policy, make_session
from proxy.provenance.attest import KEYS_PATH, Attestor
from proxy.provenance.keys import FarmKeys
from proxy.provenance.verify import ATTESTATIONS_PATH
from proxy.redact import redact
from proxy.settings import Settings
from proxy.storage.blobs import LocalBlobStore
from proxy.storage.diskspace import DiskFullReport
from proxy.storage.files import DownloadState, FileSource, FileStore
from proxy.storage.scrub import Scrubber, Verifier
from proxy.web.accesslog import AccessLog
from proxy.web.builds import attestation, built, built_by_name, pending
from proxy.web.edge import ConnectionLimits, Connections, EdgeSite
from proxy.web.files import file
from proxy.web.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from proxy.web.metrics import Metrics, TimedUpstream
from proxy.web.middleware import errors_and_context
from proxy.web.pages import project_page, root_page
from proxy.web.resources import connection_budget, quiet_loop_errors, raise_fd_limit
from proxy.web.services import SERVICES, Services

log = structlog.get_logger("wheelfarm")
__all__ = ["AccessLog", "create_app", "errors_and_context", "run"]  # AccessLog: the tests' server threads


async def healthz(request: web.Request) -> web.Response:
    """Liveness, and whether builds are offered (and if not, why): the proxy serves pages either way."""
    status = (await request.app[SERVICES].builds.capabilities()).status
    return web.json_response({"status": "ok", "time": time.time(), "builder": status.view()})


async def metrics(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    services.metrics.update_builds(await services.builds.counts())
    body = services.metrics.render()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


async def signing_keys(request: web.Request) -> web.Response:
    """The farm's signing keys (the current one and every one it signed with before): what checks the
    provenance of its built wheels (``wheelfarm verify``)."""
    services = request.app[SERVICES]
    signing = services.signing
    if signing is None:
        raise NotFound("this proxy builds no wheels: it signs nothing")
    # In a cluster, every key any of its processes signs with: any process may serve a wheel another signed.
    published = await services.keyring.published(signing) if services.keyring else signing.published()
    return web.json_response(published, headers={"Cache-Control": "max-age=300"})


def create_app(
    settings: Settings,
    *,
    upstream: Upstream | None = None,
    clock: Clock | None = None,
) -> web.Application:
    """The proxy. ``upstream`` defaults to HTTP against ``settings.upstream_url``; builds run on this host
    when ``[builder] enabled``; tests inject the clock."""
    app = web.Application(middlewares=[errors_and_context], client_max_size=1 << 20)
    the_clock = clock if clock is not None else SystemClock()
    if settings.cluster_database:
        add_farm_routes(app)  # remote builders pull their jobs here (proxy/cluster/farmapi.py)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        # The cache folder first: a start-up that cannot write it fails before anything else is opened.
        await asyncio.to_thread(_writable_folder, settings.cache_dir)
        session = None
        source = upstream
        if source is None:
            session = make_session(settings)
            # A page fetch gets a total deadline too: sock_read alone lets a trickling upstream hold a client.
            source = HttpUpstream(
                session,
                settings.upstream_simple_url,
                page_timeout=settings.upstream_read_timeout,
                policy=host_policy(settings),
                max_page_bytes=settings.upstream_max_page_mb << 20,
                max_root_bytes=settings.upstream_max_root_mb << 20,
            )
        source = TimedUpstream(source, app_metrics)
        cache_dir = settings.cache_dir
        disk = DiskFullReport()  # pages and files share the disk: one rate-limited voice for both
        store = PageStore(cache_dir / "pages", max_bytes=settings.cache_max_page_mb << 20, disk=disk)
        files = await asyncio.to_thread(  # makes its folders
            FileStore,
            settings.cache_files_dir or cache_dir / "files",
            source,
            the_clock,
            max_bytes=settings.cache_max_file_mb << 20,
            min_free_bytes=settings.cache_min_free_mb << 20,
            disk=disk,
        )
        await files.load()
        verifier = Verifier(files, the_clock)
        builds: BuildService = NoBuilds()
        signing = None
        keyring = None
        if settings.cluster_database or settings.builder_enabled:
            signing = await asyncio.to_thread(
                FarmKeys.load, cache_dir / "private" / "signing", settings.provenance_key_file
            )
            log.info("signing_key", keyid=signing.keyid, keys=KEYS_PATH)
        attestor = Attestor(signing, BUILDER_VERSION) if signing is not None else None
        if settings.cluster_database:
            cluster = await start_cluster_builds(settings, files, the_clock, attestor)
            builds = cluster
            if signing is not None:
                keyring = ClusterKeyring(cluster.pool)
                await keyring.publish(signing)
            app[CLUSTER] = cluster.remote
            app.on_shutdown.append(lambda _: _stop_long_polls(cluster.remote))
            app[UPLOADS] = cache_dir / "uploads"
            await asyncio.to_thread(app[UPLOADS].mkdir, exist_ok=True)
        elif settings.builder_enabled:
            builds = await start_embedded_builds(settings, files, the_clock, attestor)
        builds.on_finished(app_metrics.build_finished)
        # The page layers, bottom up (proxy/pages/source.py).
        page_cache = PageCache(source, store, the_clock, settings)
        policy = PolicyPages(page_cache)
        pages = FollowingUpstream(policy, builds, remembered=settings.cache_pages_in_memory)
        overlay = OverlayPages(
            pages,
            builds,
            rendered_limit=settings.cache_rendered_in_memory,
            lock_hold_seconds=settings.builder_uv_hold_seconds,
        )
        app[SERVICES] = Services(
            settings=settings,
            overlay=overlay,
            pages=pages,
            policy=policy,
            page_cache=page_cache,
            root=RootList(source, store, cache_dir / "root", the_clock, settings),
            files=files,
            metrics=app_metrics,
            verifier=verifier,
            builds=builds,
            signing=signing,
            keyring=keyring,
        )
        page_sizes: dict[str, float] = {"pages.bytes": 0, "pages.entries": 0}

        def cache_sizes() -> dict[str, float]:
            return {
                **page_sizes,
                "files.bytes": files.index.total_bytes,
                "files.entries": len(files.index),
                "files.evictions": files.evictions,
                **app_metrics.built_sizes,
            }

        app_metrics.watch_cache(cache_sizes)
        app_metrics.watch_disk(disk)
        app_metrics.watch_integrity(files.counts)
        log.info("proxy_ready", upstream=redact(settings.upstream_simple_url), cache_dir=str(cache_dir))
        background = [asyncio.create_task(_measure_pages(store, page_sizes))]
        if settings.cache_scrub_mb_per_minute > 0:
            scrubber = Scrubber(files, settings.cache_scrub_mb_per_minute << 20)
            background.append(asyncio.create_task(scrubber.run()))
        yield
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await verifier.close()
        await builds.close()
        await files.close()
        store.close()
        if session is not None:
            await session.close()

    app_metrics = Metrics()
    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get(KEYS_PATH, signing_keys)
    app.router.add_get(ATTESTATIONS_PATH + "{sha256}", attestation)
    if settings.admin_enabled and not settings.admin_listen:
        app.add_subapp("/admin/", create_admin_app(app, [], standalone=False))
    # The same API under three scopes: /simple/ (target from the User-Agent), /t/<target>/simple/ (named),
    # /plain/simple/ (no overlay). Page links are relative, so each scope's links stay in that scope.
    for prefix in ("", "/t/{scope}", "/plain"):
        app.router.add_get(prefix + "/simple/", root_page)
        app.router.add_get(prefix + "/simple/{project}/", project_page)
        app.router.add_get(prefix + "/simple/{project}", project_page)
        app.router.add_get(prefix + FILE_ROUTE, file)
        app.router.add_get(prefix + PENDING_ROUTE, pending)
        app.router.add_get(prefix + BUILT_ROUTE, built)
        app.router.add_get(prefix + BUILT_BY_NAME_ROUTE, built_by_name)
    return app


PAGE_STATS_INTERVAL_SECONDS = 60.0


async def _measure_pages(store: PageStore, sizes: dict[str, float]) -> None:
    """The page cache's size for /metrics, measured in a thread now and then (SQLite, not per scrape)."""
    while True:
        with contextlib.suppress(OSError):
            sizes["pages.entries"], sizes["pages.bytes"] = await store.stats()
        await asyncio.sleep(PAGE_STATS_INTERVAL_SECONDS)


def _writable_folder(folder: Path) -> None:
    """Make ``folder`` and check we may write there (an OSError naming it otherwise)."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write-check-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


async def _stop_long_polls(remote: RemoteBuilders) -> None:
    remote.stop_long_polls()


def sdist_fetcher(files: FileStore) -> SdistFetcher:
    """Builds take their sdists from our own file store (verified against the sha256 the page gave)."""

    async def fetch_sdist(job: BuildJob) -> Path:
        source = FileSource(job.sdist_sha256, job.sdist_url, job.sdist_sha256, None)
        cached = await files.cached(source.key)
        if cached is not None:
            return cached
        download = files.download(source)
        await download.wait_done()
        if download.state is not DownloadState.DONE:
            raise download.error or UpstreamError("sdist download failed")
        return download.final_path

    return fetch_sdist


def build_policy(settings: Settings) -> BuildPolicy:
    return BuildPolicy(
        allow=settings.builder_allow,
        deny=settings.builder_deny,
        orphan_retention=settings.builder_orphan_retention,
        max_builds=settings.builder_max_builds,
        reproduce=settings.builder_reproduce,
    )


async def start_embedded_builds(
    settings: Settings, files: FileStore, clock: Clock, attestor: Attestor | None = None
) -> EmbeddedBuildService:
    """Builds on this host: worker processes, sdists from our own file store, records and artifacts in the
    cache folder. The sandbox self-check runs in the background; builds are offered once it passes."""
    host = BuildHost(host_settings(settings))
    records = BuildRecords(settings.cache_dir / "built", attestor)
    service = EmbeddedBuildService(
        host, records, sdist_fetcher(files), build_policy(settings), clock, settings.builder_timeout
    )
    await service.start()
    return service


async def start_cluster_builds(
    settings: Settings, files: FileStore, clock: Clock, attestor: Attestor | None = None
) -> ClusterBuildService:
    """The queue and records in the cluster's PostgreSQL (its schema brought up to date first), the
    artifacts in the shared store, and, unless builds are off here, this host's builder taking jobs."""
    url = settings.cluster_database
    await upgrade_database(url)
    # Each connection checked as it is taken: after a database restart the pool's old ones are dead.
    pool: Pool = AsyncConnectionPool(
        url,
        min_size=1,
        max_size=10,
        open=False,
        kwargs={"autocommit": True},
        check=AsyncConnectionPool.check_connection,
    )
    service = ClusterBuildService(
        pool,
        url,
        LocalBlobStore(settings.cluster_store or settings.cache_dir / "built"),
        BuildHost(host_settings(settings)) if settings.builder_enabled else None,
        sdist_fetcher(files),
        build_policy(settings),
        clock,
        settings.builder_timeout,
        settings.cluster_lease_seconds,
        host_settings(settings).limits,
        attestor,
    )
    await service.start()
    return service


def host_settings(settings: Settings) -> HostSettings:
    mib = 1 << 20
    interpreters = dict(item.split("=", 1) for item in settings.builder_interpreters if "=" in item)
    return HostSettings(
        work_root=settings.builder_work_dir or settings.cache_dir / "work",
        index_url=settings.plain_index_url,
        workers=max(1, settings.builder_workers),
        limits=Limits(
            timeout_seconds=settings.builder_timeout,
            memory_bytes=settings.builder_memory_mb * mib,
            processes=settings.builder_processes,
            file_size_bytes=settings.builder_max_file_mb * mib,
            output_bytes=settings.builder_max_output_mb * mib,
            metadata_bytes=settings.builder_max_metadata_kb * 1024,
            files=settings.builder_max_files,
            min_free_bytes=settings.builder_min_free_mb * mib,
        ),
        build_uid=settings.builder_build_uid,
        bwrap=settings.builder_bwrap,
        interpreters=interpreters,
        targets=settings.builder_targets,
    )


def run(settings: Settings) -> None:
    if settings.server_processes > 1:
        from proxy.web.processes import run_processes

        run_processes(settings, lambda each: asyncio.run(_serve(each)))
        return
    asyncio.run(_serve(settings))


async def _serve(settings: Settings) -> None:
    """The proxy's listener and, with ``[admin] listen``, the admin listener; until SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    access = AccessLog(logging.getLogger("aiohttp.access"), "")
    connections = Connections(_connection_limits(settings), access)
    quiet_loop_errors(loop, connections.shed)
    app = create_app(settings)
    runners = [web.AppRunner(app, handler_cancellation=False)]
    addresses = [(settings.host, settings.port)]
    if settings.admin_enabled and settings.admin_listen:
        admin_host, _, admin_port = settings.admin_listen.rpartition(":")
        admin = create_admin_app(app, [errors_and_context], standalone=True)
        runners.append(web.AppRunner(admin, handler_cancellation=False))
        addresses.append((admin_host.strip("[]") or "127.0.0.1", int(admin_port)))
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        for runner, (host, port) in zip(runners, addresses, strict=True):
            await runner.setup()
            if runner.app is app:  # its start-up made the metrics: both listeners count into them
                metrics = app[SERVICES].metrics
                connections.access.metrics = metrics
                metrics.watch_connections(lambda: connections.open, lambda: dict(connections.closed))
            await EdgeSite(runner, host, port, connections, shared=settings.server_processes > 1).start()
            serves_admin = runner.app is not app or (settings.admin_enabled and not settings.admin_listen)
            log.info("listening", host=host, port=port, admin=serves_admin)
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


def _connection_limits(settings: Settings) -> ConnectionLimits:
    """The limits of client connections, the most connections fitting under the descriptor limit (raised
    to the hard limit first)."""
    fds = raise_fd_limit()
    # raised_from: the soft limit the proxy was started with, when it could raise it (null: it could not,
    # or it already was the hard limit).
    log.info("fd_limit", soft=fds.soft, hard=fds.hard, raised_from=fds.raised_from)
    budget = connection_budget(settings.server_max_connections, fds.soft)
    if budget < settings.server_max_connections:
        log.warning(
            "max_connections_lowered",
            configured=settings.server_max_connections,
            max_connections=budget,
            fd_limit=fds.soft,
            hint="raise the hard open-files limit (LimitNOFILE= in a systemd unit, ulimit -Hn)",
        )
    return ConnectionLimits(settings.server_header_timeout, settings.server_idle_timeout, budget)
