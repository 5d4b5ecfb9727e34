"""A cluster's second builds (reproducibility verdicts) go to another builder than the one that made the
wheel, and its keyring is published by every process (real PostgreSQL, real remote builders)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psycopg
from buildkit import TARGET, absolute, page, pending_links
from clientenv import Client
from clients import install
from clusterkit import add_token, cluster_args, learns_of_builders, upload_result
from dists import make_wheel
from fake_upstream import FakeIndex, FakeUpstreamServer
from fakes import free_port
from psycopg_pool import AsyncConnectionPool
from serve import WHEELFARM, server_env, wheelfarm_serve

from builder.jobs import BuildJob, BuildRecord, BuildState, Phase, TargetOffer
from builder.protocol import WorkerReport
from builder.tags import Target
from proxy.builds.judge import MAX_NOTE, judges
from proxy.cluster.notices import Notices
from proxy.cluster.queue import MAX_ATTEMPTS, BuildQueue, Finished
from proxy.cluster.records import ClusterRecords
from proxy.cluster.schema import upgrade_database
from proxy.cluster.seconds import SecondBuilds
from proxy.provenance.attest import verified_statement
from proxy.provenance.keys import KnownKey
from proxy.storage.blobs import LocalBlobStore

X86 = TargetOffer("manylinux", "x86_64", (11, 12))
ONLY_312 = TargetOffer("manylinux", "x86_64", (12,))


def _job(sha: str) -> BuildJob:
    return BuildJob(
        "demo", "1.0", "demo-1.0.tar.gz", sha, f"https://files.example/{sha}", Target.parse(TARGET)
    )


async def _present(sha: str) -> bool:
    return True


async def _built_by(queue: BuildQueue, job: BuildJob, builder: str) -> BuildRecord:
    """``job`` queued, claimed by ``builder`` and recorded as done by it."""
    await queue.enqueue(job, time.time())
    claimed = await queue.claim(X86, builder, 60, time.time())
    assert claimed == job
    now = time.time()
    record = BuildRecord(
        job.key, BuildState.DONE, job.project, job.version, job.sdist_filename, now, now,
        wheel_filename="demo-1.0-py3-none-any.whl", wheel_sha256=job.sdist_sha256[::-1], made_by=builder,
    )  # fmt: skip
    assert await queue.finish(record, [], builder, _present) is Finished.RECORDED
    return record


def test_a_second_build_goes_to_another_builder_and_to_the_first_only_when_none_other_can(
    database: str,
) -> None:
    async def scenario() -> None:
        await upgrade_database(database)
        async with AsyncConnectionPool(database, min_size=1, max_size=4, kwargs={"autocommit": True}) as pool:
            queue, seconds = BuildQueue(pool), SecondBuilds(pool)
            first = await _built_by(queue, _job("1" * 64), "builder-a")
            assert await seconds.queue_unjudged(time.time(), first.key) == 1
            assert await seconds.queue_unjudged(time.time(), first.key) == 0  # queued once
            both = [("builder-a", X86), ("builder-b", X86)]
            # The builder that made the wheel may not judge it while another one builds its target ...
            assert await seconds.claim(X86, "builder-a", 60, both) is None
            taken = await seconds.claim(X86, "builder-b", 60, both)
            assert taken is not None
            assert taken.key == first.key
            assert await seconds.holds(first.key, "builder-b") == (taken, first.wheel_sha256)
            assert await seconds.holds(first.key, "builder-a") is None
            assert await seconds.renew(first.key, "builder-b", 60, started_after=time.time() - 600)
            # Held for longer than a build may run: no more renewals.
            assert not await seconds.renew(first.key, "builder-b", 60, started_after=time.time() + 1)
            assert not await seconds.renew(first.key, "builder-a", 60)  # not the holder
            # ... one at a time per builder ...
            other = await _built_by(queue, _job("2" * 64), "builder-a")
            await seconds.queue_unjudged(time.time(), other.key)
            assert await seconds.claim(X86, "builder-b", 60, both) is None
            # ... and by itself only when the other live builders do not build that target.
            assert await seconds.claim(X86, "builder-a", 60, both) is None
            alone = await seconds.claim(X86, "builder-a", 60, [("builder-a", X86), ("builder-c", ONLY_312)])
            assert alone is not None
            assert alone.key == other.key
            # A cluster process's builder restarted (another pid) is still the machine that made the wheel.
            restarted = await _built_by(queue, _job("3" * 64), "farmhost:100")
            await seconds.queue_unjudged(time.time(), restarted.key)
            live = [("farmhost:200", X86), ("builder-c", X86)]
            assert await seconds.claim(X86, "farmhost:200", 60, live) is None
            assert (await seconds.claim(X86, "builder-c", 60, live) or _job("0" * 64)).key == restarted.key
            # Concurrent claims of one builder (its long polls wake together) still take one second build.
            for sha in ("4", "5", "6", "7"):
                await seconds.queue_unjudged(time.time(), (await _built_by(queue, _job(sha * 64), "x")).key)
            claims = await asyncio.gather(*(seconds.claim(X86, "greedy", 60, both) for _ in range(8)))
            assert sum(claim is not None for claim in claims) == 1, claims
            # A verdict is recorded only by the holder, on the wheel it was compared with.
            signed = "d" * 64  # the statement signed again with the verdict
            judged = dataclasses.replace(
                first, reproduced=True, reproduced_by="builder-b", attestation_sha256=signed
            )
            assert not await seconds.record_verdict(judged, [signed], "intruder", _present)
            changed = dataclasses.replace(judged, wheel_sha256="f" * 64)
            assert not await seconds.record_verdict(changed, [signed], "builder-b", _present)
            assert await seconds.holds(first.key, "builder-b") is not None
            # Upstream stops listing the sdist while the second build is compared: the verdict keeps the mark.
            await queue.set_orphaned("demo", frozenset(sha * 64 for sha in "2345678"), 123.0)
            assert await seconds.record_verdict(judged, [signed], "builder-b", _present)
            record = await queue.state(first.key)
            assert isinstance(record, BuildRecord)
            assert (record.reproduced, record.reproduced_by) == (True, "builder-b")
            assert (record.attestation_sha256, record.orphaned_since) == (signed, 123.0)
            async with pool.connection() as conn:
                row = await (await conn.execute(
                    "SELECT artifacts FROM builds WHERE sdist_sha256 = %s", (first.key.sdist_sha256,)
                )).fetchone()  # fmt: skip
            assert row == ([signed],)
            assert await seconds.queue_unjudged(time.time()) == 0  # judged: never queued again
            # A lost lease puts the second build back; after MAX_ATTEMPTS it is dropped, not failed.
            for attempt in range(MAX_ATTEMPTS):
                if attempt:
                    assert await seconds.claim(X86, "builder-a", 0.01, [("builder-a", X86)]) is not None
                else:
                    assert await seconds.renew(other.key, "builder-a", 0.01)
                await asyncio.sleep(0.05)
                await seconds.requeue_expired()
            assert await seconds.pending() == 5  # the other builds' (3 to 7): that of "other" is dropped
            assert (await queue.state(other.key)) == other  # the build itself is untouched
            # At start every served wheel without a verdict is queued again; a forgotten build takes its
            # second build along.
            assert await seconds.queue_unjudged(time.time()) == 1
            assert await queue.forget(other.key, _present) is not None
            assert await seconds.pending() == 5

    asyncio.run(scenario())


def _record(database: str, project: str) -> dict[str, object]:
    with psycopg.connect(database, autocommit=True) as conn:
        row = conn.execute("SELECT record FROM builds WHERE project = %s", (project,)).fetchone()
    assert row is not None, f"no build of {project}"
    record: dict[str, object] = row[0]
    return record


def test_another_builder_reproduces_a_clusters_wheel_and_every_process_publishes_every_key(
    fake_upstream: FakeUpstreamServer, build_index: FakeIndex, database: str, tmp_path: Path
) -> None:
    """Two farm processes with keys of their own (separate cache folders) and two remote builders, one on
    each: the wheel one builder made is built again by the other, the verdict names both, it is signed
    into the statement, and the keys of both processes are published by each of them."""
    env = {"WHEELFARM_CLUSTER_DATABASE": database, "WHEELFARM_BUILDER_REPRODUCE": "yes"}
    with contextlib.ExitStack() as stack:
        farms = []
        for n in range(2):
            port = free_port()
            args = cluster_args(port, tmp_path / f"p{n}", tmp_path / "shared", fake_upstream, builds=False)
            farms.append(stack.enter_context(wheelfarm_serve(args, port, tmp_path / f"s{n}", env)))
        for n, farm in enumerate(farms):
            token = add_token(database, f"remote-{n}", tmp_path / "cli")
            command = [
                str(WHEELFARM), "builder", "run", "--farm", farm.url, "--work-dir", str(tmp_path / f"b{n}"),
                "--workers", "1", "--build-uid", str(1_900_400_000 + n * 1000),
            ]  # fmt: skip
            builder = subprocess.Popen(
                command,
                env=server_env(tmp_path / f"bh{n}", {"WHEELFARM_BUILDER_TOKEN": token}),
                stdout=subprocess.DEVNULL,
                stderr=stack.enter_context((tmp_path / f"builder{n}.log").open("wb")),
            )
            stack.callback(builder.wait, 30)  # the builders stop before the farms (callbacks run last first)
            stack.callback(builder.send_signal, signal.SIGINT)
        for farm in farms:
            learns_of_builders(farm)
        result = install(Client.PIP, farms[0].simple_url, ["tinypure==3.0"], tmp_path / "pip").check()
        assert result.installed()["tinypure"] == "3.0"
        deadline = time.monotonic() + 180
        while (record := _record(database, "tinypure")).get("reproduced") is None:
            assert time.monotonic() < deadline, f"no verdict: {record}"
            time.sleep(0.5)
        assert record["reproduced"] is True, record
        made_by, second = record["made_by"], record["reproduced_by"]
        assert {made_by, second} == {"remote-0", "remote-1"}, record

        published = [httpx.get(f.url + "/.well-known/wheelfarm/keys.json", timeout=30).json() for f in farms]
        ids = [{each["keyid"] for each in keys["keys"]} for keys in published]
        currents = {keys["current"] for keys in published}
        assert len(currents) == 2, "each process should sign with a key of its own"
        assert ids[0] == ids[1] == currents
        keys = [KnownKey.from_json(each).key for each in published[1]["keys"]]
        sha, wheel = str(record["wheel_sha256"]), str(record["wheel_filename"])
        for farm in farms:
            envelope = httpx.get(f"{farm.url}/.well-known/wheelfarm/attestations/{sha}", timeout=30)
            statement = verified_statement(envelope.content, keys, wheel, sha)
            details = statement["predicate"]["runDetails"]
            assert details["builder"]["id"] == f"urn:wheelfarm:builder:{made_by}"
            verdict = details["metadata"]["wheelfarm_reproducibility"]
            assert verdict["reproduced"] is True
            assert verdict["second_builder"] == f"urn:wheelfarm:builder:{second}"
        summary = httpx.get(farms[1].url + "/admin/api/summary", timeout=30).json()
        assert summary["reproducibility"]["reproduced"] == 1


def test_a_second_build_failure_is_a_verdict_only_when_it_is_the_packages_and_seen_here(
    database: str, tmp_path: Path
) -> None:
    """A remote builder's failure is its word only, and a failed fetch or a host's crash says nothing of the
    package: none of them becomes a signed "not reproduced"; the second build goes to another try. A failure
    seen here is a verdict, its (hostile, long) error cut short."""
    assert judges(WorkerReport(ok=True), remote=True)
    assert not judges(WorkerReport.failure(Phase.BUILD, "no"), remote=True)
    assert judges(WorkerReport.failure(Phase.BUILD, "no"), remote=False)
    for phase in (Phase.FETCH, Phase.INTERNAL):
        assert not judges(WorkerReport.failure(phase, "the host's trouble"), remote=False)

    async def scenario() -> None:
        await upgrade_database(database)
        async with AsyncConnectionPool(database, min_size=1, max_size=4, kwargs={"autocommit": True}) as pool:
            queue = BuildQueue(pool)
            blobs = LocalBlobStore(tmp_path / "store")
            records = ClusterRecords(queue, blobs, Notices(database), max_builds=0)
            wheel = await blobs.put(b"the served wheel's bytes")
            built = _job("8" * 64)
            await queue.enqueue(built, time.time())
            assert await queue.claim(X86, "builder-a", 60, time.time()) == built
            now = time.time()
            record = BuildRecord(
                built.key, BuildState.DONE, "demo", "1.0", built.sdist_filename, now, now,
                wheel_filename="demo-1.0-py3-none-any.whl", wheel_sha256=wheel.sha256, made_by="builder-a",
            )  # fmt: skip
            assert await queue.finish(record, [wheel.sha256], "builder-a", _present) is Finished.RECORDED
            await records.seconds.queue_unjudged(time.time(), built.key)
            both = [("builder-a", X86), ("builder-b", X86)]
            assert await records.seconds.claim(X86, "builder-b", 60, both) == built
            lie = WorkerReport.failure(Phase.BUILD, "REPRODUCED OK " + "x" * 1_000_000)
            assert await records.judge(built.key, "builder-b", lie, None, remote=True) is None
            assert await records.seconds.holds(built.key, "builder-b") is None  # back in the queue
            unjudged = await queue.state(built.key)
            assert isinstance(unjudged, BuildRecord)
            assert unjudged.reproduced is None
            # The same failure seen by this farm's own builder is a verdict, its note cut short.
            assert await records.seconds.claim(X86, "builder-b", 60, both) == built
            judged = await records.judge(built.key, "builder-b", lie, None, remote=False)
            assert judged is not None
            assert judged.reproduced is False
            assert judged.reproduction_note.startswith("the second build failed in build: REPRODUCED OK xxx")
            assert len(judged.reproduction_note) == MAX_NOTE

    asyncio.run(scenario())


def test_a_remote_builders_word_on_the_sdist_is_not_what_the_farm_signs(
    fake_upstream: FakeUpstreamServer, build_index: FakeIndex, database: str, tmp_path: Path
) -> None:
    """A token holder's report says the sdist came from a URL of its choosing (one that verify --rebuild
    would fetch from the verifier's machine): the farm signs the job's sdist, not the builder's word. And the
    job it was given names the sdist without the upstream's credentials."""
    # The upstream lists the sdist at a URL with credentials (RFC 3986 userinfo): no builder sees them.
    found = build_index.find("tinypure-3.0.tar.gz")
    assert found is not None
    listed = fake_upstream.file_url("tinypure-3.0.tar.gz").replace("http://", "http://reader:s3cret@")
    found[1].listed_url = listed
    build_index.touch("tinypure")
    env = {"WHEELFARM_CLUSTER_DATABASE": database}
    port = free_port()
    args = cluster_args(port, tmp_path / "farm", tmp_path / "shared", fake_upstream, builds=False)
    with wheelfarm_serve(args, port, tmp_path / "sf", env) as farm:
        auth = {"Authorization": f"Bearer {add_token(database, 'mallory', tmp_path / 'cli')}"}
        offer = {"offer": {"family": "manylinux", "arch": "x86_64", "pythons": [11]}}
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            claiming = pool.submit(
                httpx.post, farm.url + "/cluster/api/claim", json=offer, headers=auth, timeout=60
            )
            learns_of_builders(farm)
            (link,) = pending_links(page(farm, "tinypure"))
            building = pool.submit(httpx.get, absolute(farm, "tinypure", link["url"]), timeout=120)
            claimed = claiming.result(timeout=60)
            assert claimed.status_code == 200, claimed.text
            job = claimed.json()["job"]
            assert "s3cret" not in claimed.text
            assert job["sdist_url"] == fake_upstream.file_url("tinypure-3.0.tar.gz")
            wheel = make_wheel(tmp_path / "wheel", "tinypure", "3.0", {"tinypure.py": b"VALUE = 1\n"})
            lie = {"url": "http://127.0.0.1:9/admin/api/delete-everything", "filename": "x.tar.gz",
                   "sha256": "0" * 64}  # fmt: skip
            report = {"ok": True, "wheel_filename": wheel.name, "provenance": {"sdist": lie}}
            upload = upload_result(farm.url, auth, job, report, wheel)
            assert upload.status_code == 200, upload.text
            assert building.result(timeout=120).status_code == 200
        record = _record(database, "tinypure")
        sha = str(record["wheel_sha256"])
        envelope = httpx.get(f"{farm.url}/.well-known/wheelfarm/attestations/{sha}", timeout=30).content
        keys = [
            KnownKey.from_json(each).key
            for each in httpx.get(farm.url + "/.well-known/wheelfarm/keys.json", timeout=30).json()["keys"]
        ]
        statement = verified_statement(envelope, keys, wheel.name, sha)
        sdist = statement["predicate"]["buildDefinition"]["externalParameters"]["sdist"]
        assert sdist == {"name": job["sdist_filename"], "uri": job["sdist_url"],
                         "digest": {"sha256": job["sdist_sha256"]}}  # fmt: skip
        assert statement["predicate"]["runDetails"]["builder"]["id"] == "urn:wheelfarm:builder:mallory"
