"""Scale-out on PostgreSQL: a real server (initdb on loopback, tests/pgserver.py), the build queue's
semantics against it, and several `wheelfarm serve` processes sharing one database and one blob store."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import signal
import subprocess
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import netns
import orjson
import psycopg
from buildkit import ADMIN_TOKEN, TARGET, absolute, files, page, pending_links
from clientenv import Client, clean_env, install_command, make_venv, venv_python
from clients import install
from clusterkit import add_token, cluster_args, learns_of_builders, upload_result, wheelfarm
from dists import in_tree_backend_sdist
from fake_upstream import FakeFile, FakeIndex, FakeUpstreamServer
from fakes import free_port
from pgserver import PASSWORD, PostgresServer
from psycopg_pool import AsyncConnectionPool
from serve import WHEELFARM, RunningServer, server_env, wheelfarm_serve

from builder.host import BUILDER_VERSION
from builder.interpreters import find_interpreter
from builder.jobs import BuildJob, BuildKey, BuildProgress, BuildRecord, BuildState, Phase, TargetOffer
from builder.tags import Target
from proxy.builds.finished import is_final, lacking_toolchain
from proxy.cluster.queue import MAX_ATTEMPTS, BuildQueue, Finished
from proxy.cluster.remotebuilders import REMOTE_FAILURE
from proxy.cluster.schema import MIGRATIONS, upgrade_database
from proxy.provenance.attest import verified_statement
from proxy.provenance.keys import KnownKey

SHA_A = "a" * 64
SHA_B = "b" * 64
X86 = TargetOffer("manylinux", "x86_64", (11, 12))
ARM = TargetOffer("manylinux", "aarch64", (11, 12))


def job(sha: str, target: str = TARGET, project: str = "demo") -> BuildJob:
    return BuildJob(
        project, "1.0", f"{project}-1.0.tar.gz", sha, f"https://files.example/{sha}", Target.parse(target)
    )


def done(record_of: BuildJob, builder: str = "x") -> BuildRecord:
    now = time.time()
    return BuildRecord(
        record_of.key, BuildState.DONE, record_of.project, record_of.version, record_of.sdist_filename,
        now, now, wheel_filename="demo-1.0-py3-none-any.whl", wheel_sha256="c" * 64, builder=builder,
    )  # fmt: skip


async def present(sha: str) -> bool:
    return True


async def absent(sha: str) -> bool:
    return False


def test_db_upgrade_applies_each_migration_once_even_from_several_processes_at_once(
    database: str, tmp_path: Path
) -> None:
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        runs = list(
            pool.map(
                lambda i: wheelfarm("db", "upgrade", database=database, home=tmp_path / str(i)), range(3)
            )
        )
    assert all(run.returncode == 0 for run in runs), [run.stderr for run in runs]
    outputs = sorted(run.stdout.strip() for run in runs)
    assert outputs.count(f"schema version 0 -> {len(MIGRATIONS)}") == 1, outputs
    assert outputs.count(f"schema version {len(MIGRATIONS)}: up to date") == 2, outputs
    with psycopg.connect(database) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM wheelfarm_schema ORDER BY version")]
    assert versions == list(range(1, len(MIGRATIONS) + 1))


def test_db_upgrade_names_an_unreachable_database_without_its_password(tmp_path: Path) -> None:
    url = f"postgresql://wheelfarm:{PASSWORD}@127.0.0.1:{free_port()}/nowhere"
    run = wheelfarm("db", "upgrade", database=url, home=tmp_path)
    assert run.returncode == 1
    assert "cannot reach postgresql://***@127.0.0.1:" in run.stderr
    assert PASSWORD not in run.stderr + run.stdout


def test_the_queue_builds_each_key_once_claims_without_waiting_and_takes_back_lost_jobs(
    database: str,
) -> None:
    async def scenario() -> None:
        await upgrade_database(database)
        async with AsyncConnectionPool(database, min_size=2, max_size=8, kwargs={"autocommit": True}) as pool:
            queue = BuildQueue(pool)
            first = await queue.enqueue(job(SHA_A), 100.0)
            again = await queue.enqueue(job(SHA_A), 200.0)  # another process, the same key: joined
            assert isinstance(first, BuildProgress)
            assert isinstance(again, BuildProgress)
            assert again.queued_at == 100.0
            await queue.enqueue(job(SHA_B), 101.0)
            # Two builders at once: SKIP LOCKED gives each its own job, oldest first, none waits.
            claims = await asyncio.gather(
                queue.claim(X86, "builder-1", 60, 300.0), queue.claim(X86, "builder-2", 60, 300.0)
            )
            assert sorted(c.sdist_sha256 for c in claims if c) == [SHA_A, SHA_B]
            assert await queue.claim(X86, "builder-3", 60, 300.0) is None  # nothing left
            # A builder for another architecture never gets an x86_64 job.
            await queue.enqueue(job("d" * 64), 102.0)
            assert await queue.claim(ARM, "arm", 60, 300.0) is None
            # Only the holder renews or finishes.
            holder = {c.sdist_sha256: n for c, n in zip(claims, ("builder-1", "builder-2"), strict=True) if c}
            assert not await queue.renew(BuildKey(SHA_A, TARGET), "intruder", 60)
            assert await queue.renew(BuildKey(SHA_A, TARGET), holder[SHA_A], 60)
            assert await queue.finish(done(job(SHA_A)), [], "intruder", present) is Finished.LOST
            # A blob deleted between its store and the finish: the builder is told to store it again.
            assert await queue.finish(done(job(SHA_A)), ["c" * 64], holder[SHA_A], absent) is Finished.MISSING
            assert (
                await queue.finish(done(job(SHA_A)), ["c" * 64], holder[SHA_A], present) is Finished.RECORDED
            )
            finished = await queue.state(BuildKey(SHA_A, TARGET))
            assert isinstance(finished, BuildRecord)
            assert finished.state is BuildState.DONE
            assert isinstance(await queue.enqueue(job(SHA_A), 400.0), BuildRecord)  # done stays done
            # A builder that stops renewing loses its job to the next one; its late result is refused.
            lost = holder[SHA_B]
            assert await queue.renew(BuildKey(SHA_B, TARGET), lost, 0.01)
            await asyncio.sleep(0.1)
            assert await queue.requeue_expired(500.0) == [BuildKey(SHA_B, TARGET)]
            retaken = await queue.claim(X86, "builder-4", 60, 501.0)
            assert retaken is not None
            assert retaken.sdist_sha256 == SHA_B
            assert await queue.finish(done(job(SHA_B)), [], lost, present) is Finished.LOST
            assert await queue.finish(done(job(SHA_B)), [], "builder-4", present) is Finished.RECORDED

    asyncio.run(scenario())


def test_a_job_that_loses_every_builder_fails_after_max_attempts(database: str) -> None:
    async def scenario() -> None:
        await upgrade_database(database)
        async with AsyncConnectionPool(database, min_size=1, max_size=4, kwargs={"autocommit": True}) as pool:
            queue = BuildQueue(pool)
            await queue.enqueue(job(SHA_A), 1.0)
            for attempt in range(1, MAX_ATTEMPTS + 1):
                claimed = await queue.claim(X86, f"doomed-{attempt}", 0.01, 2.0)
                assert claimed is not None, attempt
                await asyncio.sleep(0.05)
                assert await queue.requeue_expired(3.0) == [claimed.key]
            failed = await queue.state(BuildKey(SHA_A, TARGET))
            assert isinstance(failed, BuildRecord)
            assert failed.state is BuildState.FAILED
            assert f"taken {MAX_ATTEMPTS} times" in failed.error
            assert "doomed-3" in failed.error
            assert await queue.claim(X86, "next", 60, 4.0) is None

    asyncio.run(scenario())


@contextlib.contextmanager
def builder_and_follower(
    tmp_path: Path, upstream: FakeUpstreamServer, env: dict[str, str], *builder_args: str
) -> Iterator[tuple[RunningServer, RunningServer]]:
    """Two serve processes on one database and store: A builds, B does not; B offers builds once it has
    read A's builder from the database."""
    store = tmp_path / "shared"
    port_a, port_b = free_port(), free_port()
    args_a = [*cluster_args(port_a, tmp_path / "a", store, upstream, builds=True), *builder_args]
    args_b = cluster_args(port_b, tmp_path / "b", store, upstream, builds=False)
    with (
        wheelfarm_serve(args_a, port_a, tmp_path / "sa", env) as a,
        wheelfarm_serve(args_b, port_b, tmp_path / "sb", env) as b,
    ):
        assert a.builder()["state"] == "ready"
        learns_of_builders(b)
        yield a, b


def test_two_processes_share_the_queue_records_and_store(
    fake_upstream: FakeUpstreamServer, build_index: FakeIndex, database: str, tmp_path: Path
) -> None:
    """Process A builds, process B does not: pip through B gets the wheel A built for B's request, and both
    list it; asking both at once for another release builds it once."""
    env = {"WHEELFARM_CLUSTER_DATABASE": database, "WHEELFARM_ADMIN_TOKEN": ADMIN_TOKEN}
    with builder_and_follower(tmp_path, fake_upstream, env) as (a, b):
        result = install(Client.PIP, b.simple_url, ["tinypure==3.0"], tmp_path / "pip").check()
        assert result.installed()["tinypure"] == "3.0"
        assert "Building wheel for tinypure" not in result.output
        finished_by = [line for line in a.log_lines() if line.get("event") == "build_finished"]
        assert [line["project"] for line in finished_by] == ["tinypure"]
        assert not [line for line in b.log_lines() if line.get("event") == "build_finished"]
        for server in (a, b):
            records = httpx.get(server.url + "/admin/api/builds", timeout=30).json()["finished"]
            assert [(r["project"], r["state"]) for r in records] == [("tinypure", "done")]
            names = list(files(page(server, "tinypure")))
            assert "tinypure-3.0-py2.py3-none-any.whl" in names, names
        # Two clients, one through each process, ask for the same pending build at the same instant.
        pending = [entry["url"] for entry in pending_links(page(a, "slowpkg"))]
        assert pending, "slowpkg has no pending link"
        urls = [absolute(server, "slowpkg", pending[0]) for server in (a, b)]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda url: httpx.get(url, timeout=180, follow_redirects=True), urls))
        assert [answer.status_code for answer in answers] == [200, 200], [
            answer.text[:300] for answer in answers
        ]
        assert answers[0].content == answers[1].content
        with psycopg.connect(database) as conn:
            rows = conn.execute("SELECT project, attempts, builder FROM builds ORDER BY project").fetchall()
        assert [(project, attempts) for project, attempts, _ in rows] == [("slowpkg", 1), ("tinypure", 1)]
        assert all(builder.endswith(f":{a.process.pid}") for _, _, builder in rows), rows
        summary = orjson.loads(httpx.get(b.url + "/admin/api/summary", timeout=30).content)
        assert summary["builds"]["done"] == 2


def holder_of(database: str, project: str, timeout: float = 60.0) -> str:
    """The builder that holds ``project``'s build once it runs."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(database, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT builder FROM builds WHERE project = %s AND state = 'running'", (project,)
            ).fetchone()
            if row is not None:
                return str(row[0])
            time.sleep(0.1)
    raise AssertionError(f"no build of {project} started within {timeout} s")


def add_slow_release(index: FakeIndex, folder: Path, name: str, seconds: float) -> None:
    sdist = in_tree_backend_sdist(folder, name, "1.0", f"    import time\n    time.sleep({seconds})")
    index.add_file(name, FakeFile.from_path(sdist))


def test_a_builder_killed_mid_build_loses_the_job_to_another_and_the_client_still_gets_its_wheel(
    fake_upstream: FakeUpstreamServer, build_index: FakeIndex, database: str, tmp_path: Path
) -> None:
    add_slow_release(build_index, tmp_path / "sdists", "sleepy", 6)
    env = {"WHEELFARM_CLUSTER_DATABASE": database}
    store = tmp_path / "shared"
    ports = [free_port() for _ in range(3)]
    lease = ["--cluster-lease-seconds", "3", "--builder-workers", "1"]
    with (
        wheelfarm_serve(
            [*cluster_args(ports[0], tmp_path / "a", store, fake_upstream, builds=True), *lease],
            ports[0], tmp_path / "sa", env,
        ) as a,
        wheelfarm_serve(
            [*cluster_args(ports[1], tmp_path / "c", store, fake_upstream, builds=True), *lease,
             "--builder-build-uid", "1900100000"],  # two builders on one host: uid ranges of their own
            ports[1], tmp_path / "sc", env,
        ) as c,
        wheelfarm_serve(
            cluster_args(ports[2], tmp_path / "b", store, fake_upstream, builds=False),
            ports[2], tmp_path / "sb", env,
        ) as b,
    ):  # fmt: skip
        assert a.builder()["state"] == c.builder()["state"] == "ready"
        learns_of_builders(b)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            installing = pool.submit(install, Client.PIP, b.simple_url, ["sleepy==1.0"], tmp_path / "pip")
            first = holder_of(database, "sleepy")
            victim, survivor = (a, c) if first.endswith(f":{a.process.pid}") else (c, a)
            victim.process.kill()  # kill -9, mid-build
            result = installing.result(timeout=240)
        result.check()
        assert result.installed()["sleepy"] == "1.0"
        with psycopg.connect(database) as conn:
            row = conn.execute(
                "SELECT attempts, builder, state FROM builds WHERE project = 'sleepy'"
            ).fetchone()
        assert row is not None
        assert row[0] == 2
        assert row[1] == f"{first.rsplit(':', 1)[0]}:{survivor.process.pid}"
        assert row[2] == "done"
        expired = [
            line
            for line in b.log_lines() + survivor.log_lines()
            if line.get("event") == "build_lease_expired"
        ]
        assert expired, "nobody noticed the lost lease"


def test_waiting_clients_and_a_running_build_outlast_a_database_restart(
    fake_upstream: FakeUpstreamServer,
    build_index: FakeIndex,
    database: str,
    postgres: PostgresServer,
    tmp_path: Path,
) -> None:
    add_slow_release(build_index, tmp_path / "sdists", "patient", 5)
    env = {"WHEELFARM_CLUSTER_DATABASE": database}
    with builder_and_follower(tmp_path, fake_upstream, env, "--builder-workers", "1") as (a, b):
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            installing = pool.submit(install, Client.PIP, b.simple_url, ["patient==1.0"], tmp_path / "pip")
            holder_of(database, "patient")
            postgres.restart()  # every connection of both processes is cut while the build runs
            result = installing.result(timeout=240)
        result.check()
        assert result.installed()["patient"] == "1.0"
        with psycopg.connect(database) as conn:
            row = conn.execute("SELECT attempts, state FROM builds WHERE project = 'patient'").fetchone()
        assert row == (1, "done")  # not lost, not built twice
        assert [line["project"] for line in a.log_lines() if line.get("event") == "build_finished"] == [
            "patient"
        ]
        # Both processes are back on the database: a page through each lists the wheel.
        for server in (a, b):
            names = list(files(page(server, "patient")))
            assert any(name.endswith("-none-any.whl") for name in names), names


def evil_wheel(path: Path) -> Path:
    """A well-formed wheel, but of another project than the job's."""
    wheel = path / "evil-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("evil/__init__.py", "print('pwned')\n")
        archive.writestr("evil-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: evil\nVersion: 1.0\n")
        archive.writestr(
            "evil-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        archive.writestr("evil-1.0.dist-info/RECORD", "")
    return wheel


def test_remote_builders_pull_jobs_with_a_token_and_a_bad_upload_is_refused_and_flagged(
    fake_upstream: FakeUpstreamServer, build_index: FakeIndex, database: str, tmp_path: Path
) -> None:
    """The farm builds nothing itself: a remote builder does, holding only its token. A builder that
    uploads a wheel of another project is refused, flagged and gets no more jobs; the job goes to the next
    builder and the client still gets the right wheel; a revoked token gets nothing."""
    env = {"WHEELFARM_CLUSTER_DATABASE": database}
    port = free_port()
    farm_args = cluster_args(port, tmp_path / "farm", tmp_path / "shared", fake_upstream, builds=False)
    with wheelfarm_serve(farm_args, port, tmp_path / "sf", env) as farm:
        good = add_token(database, "remote-1", tmp_path / "cli")
        mallory = add_token(database, "mallory", tmp_path / "cli")
        auth = {"Authorization": f"Bearer {mallory}"}
        offer = {"offer": {"family": "manylinux", "arch": "x86_64", "pythons": [11]}}
        assert httpx.post(farm.url + "/cluster/api/claim", json=offer, timeout=60).status_code == 401
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            claiming = pool.submit(
                httpx.post, farm.url + "/cluster/api/claim", json=offer, headers=auth, timeout=60
            )
            learns_of_builders(farm)  # mallory's claim announced a builder
            installing = pool.submit(install, Client.PIP, farm.simple_url, ["slowpkg==1.0"], tmp_path / "pip")
            claimed = claiming.result(timeout=60)
            assert claimed.status_code == 200, claimed.text
            job = claimed.json()["job"]
            assert job["project"] == "slowpkg"
            sdist = httpx.get(farm.url + claimed.json()["sdist_url"], headers=auth, timeout=30)
            assert hashlib.sha256(sdist.content).hexdigest() == job["sdist_sha256"]
            wheel = evil_wheel(tmp_path)
            # A report whose fields are not of their types is a 400 before anything else looks at it.
            garbage = {"ok": "yes", "wheel_filename": wheel.name, "provenance": ["not", "a", "mapping"]}
            refused = httpx.post(
                f"{farm.url}/cluster/api/jobs/{job['sdist_sha256']}/{job['target']}/result",
                headers=auth,
                files={"report": ("report.json", orjson.dumps(garbage))},
                timeout=60,
            )
            assert refused.status_code == 400
            assert "wrong type" in refused.text
            report = {"ok": True, "wheel_filename": wheel.name, "build_seconds": 1.0}
            upload = upload_result(farm.url, auth, job, report, wheel)
            assert upload.status_code == 422, upload.text
            assert "the wheel is for project 'evil'" in upload.text
            flagged = httpx.post(farm.url + "/cluster/api/claim", json=offer, headers=auth, timeout=60)
            assert flagged.status_code == 403
            assert "flagged" in flagged.text
            # An offer no builder could have (a thousand Pythons) is refused before anyone reads it.
            huge = {"offer": {"family": "manylinux", "arch": "x86_64", "pythons": list(range(8, 1008))}}
            assert (
                httpx.post(farm.url + "/cluster/api/claim", json=huge, headers=auth, timeout=60).status_code
                == 400
            )
            # The real builder: only its token in its environment, no database URL, no admin token.
            builder = subprocess.Popen(
                [str(WHEELFARM), "builder", "run", "--farm", farm.url, "--work-dir", str(tmp_path / "rb"),
                 "--workers", "1", "--build-uid", "1900200000"],
                env=server_env(tmp_path / "rbhome", {"WHEELFARM_BUILDER_TOKEN": good}),
                stdout=subprocess.DEVNULL,
                stderr=(tmp_path / "builder.log").open("wb"),
            )  # fmt: skip
            try:
                result = installing.result(timeout=240)
            finally:
                builder.send_signal(signal.SIGINT)
                builder.wait(timeout=30)
        result.check()
        assert result.installed()["slowpkg"] == "1.0"
        with psycopg.connect(database) as conn:
            row = conn.execute(
                "SELECT builder, record->>'made_by', attempts FROM builds WHERE project = 'slowpkg'"
            ).fetchone()
            reason = conn.execute("SELECT flagged_reason FROM builders WHERE id = 'mallory'").fetchone()
        assert row == ("remote-1", "remote-1", 2)
        seen = {
            b["id"]: b for b in httpx.get(farm.url + "/admin/api/builders", timeout=30).json()["builders"]
        }
        assert seen["remote-1"]["builds"]["platform"] == "manylinux x86_64"
        assert "the wheel is for project 'evil'" in seen["mallory"]["flagged"]
        assert not seen["mallory"]["live"]
        unflag = wheelfarm("db", "unflag", "mallory", database=database, home=tmp_path / "cli")
        assert unflag.returncode == 0, unflag.stderr
        assert not httpx.get(farm.url + "/admin/api/builders", timeout=30).json()["builders"][0]["flagged"]
        finished = httpx.get(farm.url + "/admin/api/builds", timeout=30).json()["finished"]
        assert [(r["project"], r["made_by"]) for r in finished] == [("slowpkg", "remote-1")]
        # The farm signed what the remote builder made (the builder holds no key): the statement names it.
        with psycopg.connect(database) as conn:
            built = conn.execute(
                "SELECT record->>'wheel_filename', record->>'wheel_sha256' FROM builds"
                " WHERE project = 'slowpkg'"
            ).fetchone()
        assert built is not None
        envelope = httpx.get(f"{farm.url}/.well-known/wheelfarm/attestations/{built[1]}", timeout=30)
        assert envelope.headers["X-Wheelfarm-Wheel"] == built[0]
        published = httpx.get(farm.url + "/.well-known/wheelfarm/keys.json", timeout=30).json()
        keys = [KnownKey.from_json(each).key for each in published["keys"]]
        statement = verified_statement(envelope.content, keys, built[0], built[1])
        assert statement["predicate"]["runDetails"]["builder"]["id"] == "urn:wheelfarm:builder:remote-1"
        assert reason is not None
        assert "evil" in reason[0]
        # A revoked token is refused at once (the farm looks tokens up again within 10 s).
        assert (
            wheelfarm("db", "revoke-token", "remote-1", database=database, home=tmp_path / "cli").returncode
            == 0
        )
        deadline = time.monotonic() + 15
        good_auth = {"Authorization": f"Bearer {good}"}
        lease = (
            f"{farm.url}/cluster/api/jobs/{'0' * 64}/{TARGET}/lease"  # answers at once: 409 (not held) or 401
        )
        while (answer := httpx.post(lease, headers=good_auth, timeout=30)).status_code != 401:
            assert time.monotonic() < deadline, f"the revoked token still works: {answer.status_code}"
            time.sleep(1)


def test_builders_on_hosts_of_their_own_build_the_targets_they_announce_for_clients_of_any_process(
    fake_upstream: FakeUpstreamServer, build_index: FakeIndex, database: str, tmp_path: Path
) -> None:
    """Two farm processes without builders of their own; two remote builders, each in a network namespace
    of its own (loopback where namespaces cannot be made) reaching one farm process over its veth link, one
    announcing CPython 3.11 and one 3.12. pip on 3.11 through one process and uv on 3.12 through the other
    each get a wheel, built by the builder of their target."""
    python311, python312 = find_interpreter("3.11"), find_interpreter("3.12")
    assert python311 is not None, "the cluster test needs a CPython 3.11"
    assert python312 is not None, "the cluster test needs a CPython 3.12 (pyenv)"
    env = {"WHEELFARM_CLUSTER_DATABASE": database}
    with contextlib.ExitStack() as stack:
        if netns.available():
            spaces = [stack.enter_context(netns.namespace()) for _ in range(2)]
            hosts = [space.gateway for space in spaces]
            wraps: list[Callable[[list[str]], list[str]]] = [space.wrap for space in spaces]
        else:
            hosts, wraps = ["127.0.0.1", "127.0.0.1"], [list, list]
        farms = []
        for n, host in enumerate(hosts):
            port = free_port()
            args = [*cluster_args(port, tmp_path / f"p{n}", tmp_path / "shared", fake_upstream, builds=False),
                    "--host", host]  # fmt: skip
            farms.append(stack.enter_context(wheelfarm_serve(args, port, tmp_path / f"s{n}", env, host=host)))
        for n, (farm, wrap, python) in enumerate(zip(farms, wraps, ("311", "312"), strict=True)):
            token = add_token(database, f"builder-{python}", tmp_path / "cli")
            command = [
                str(WHEELFARM), "builder", "run", "--farm", farm.url, "--work-dir", str(tmp_path / f"b{n}"),
                "--workers", "1", "--targets", f"cp{python}-*", "--build-uid", str(1_900_300_000 + n * 1000),
                "--python", f"3.11={python311}", "--python", f"3.12={python312}",
            ]  # fmt: skip
            builder = subprocess.Popen(
                wrap(command),
                env=server_env(tmp_path / f"bh{n}", {"WHEELFARM_BUILDER_TOKEN": token}),
                stdout=subprocess.DEVNULL,
                stderr=stack.enter_context((tmp_path / f"builder{n}.log").open("wb")),
            )
            stack.callback(builder.wait, 30)
            stack.callback(builder.send_signal, signal.SIGINT)
        for farm in farms:
            learns_of_builders(farm)
        trusted = ["--trusted-host", hosts[0]]  # plain HTTP to a host that is not localhost
        pip = install(
            Client.PIP, farms[0].simple_url, ["tinypure==3.0"], tmp_path / "pip", extra_args=trusted
        )
        pip.check()
        assert pip.installed()["tinypure"] == "3.0"
        uv_env = clean_env(tmp_path / "uv" / "home")
        venv = make_venv(tmp_path / "uv" / "venv", uv_env, interpreter=python312)
        index = ["--index-url", farms[1].simple_url]
        uv = subprocess.run(
            install_command(Client.UV, venv_python(venv), index, ["tinypure==3.0"]),
            env=uv_env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert uv.returncode == 0, uv.stderr
        with psycopg.connect(database) as conn:
            rows = conn.execute("SELECT target, builder, state FROM builds ORDER BY target").fetchall()
        assert [(target.split("-")[0], builder, state) for target, builder, state in rows] == [
            ("cp311", "builder-311", "done"),
            ("cp312", "builder-312", "done"),
        ]


def test_a_remote_builders_failure_is_never_final_nor_a_project_wide_verdict() -> None:
    """A builder's word that a build failed cannot be checked: a hostile one must not block a project
    ("lacks a toolchain") or make a failure stick; a local failure of this builder version may."""
    now = time.time()
    local = BuildRecord(
        BuildKey(SHA_A, TARGET), BuildState.FAILED, "numpy", "2.0", "numpy-2.0.tar.gz", now, now,
        error="no Fortran compiler", phase=Phase.TOOLCHAIN, builder=BUILDER_VERSION,
    )  # fmt: skip
    remote = dataclasses.replace(local, builder=REMOTE_FAILURE, made_by="mallory")
    assert is_final(local)
    assert lacking_toolchain(local) is not None
    assert not is_final(remote)
    assert lacking_toolchain(remote) is None
