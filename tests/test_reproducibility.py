"""Reproducibility verdicts: each built wheel is built a second time at a quiet moment (builder/reproduce.py,
proxy/builds/embedded.py) and its signed provenance says whether the bytes came out the same, and if not
which files of the wheel differ; the admin API and /metrics show the share."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
from buildkit import TARGET, absolute, build_records, page, pending_links, start_builder_proxy
from cdp import Browser
from dists import FIXED_TIMES, RANDOM_VALUE, in_tree_backend_sdist
from fake_upstream import FakeFile, FakeIndex, FakeUpstreamServer
from fakes import FakeClock
from hostile import needs_bwrap
from serve import WHEELFARM

from builder.reproduce import compare_wheels
from proxy.provenance.attest import verified_statement
from proxy.provenance.keys import KnownKey


def _wheel(path: Path, members: dict[str, bytes], date: tuple[int, int, int, int, int, int]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=date), data)
    return path


def test_compare_wheels_names_what_differs(tmp_path: Path) -> None:
    base = {"demo.py": b"VALUE = 1\n", "demo-1.0.dist-info/RECORD": b"x"}
    day = (2024, 1, 1, 0, 0, 0)
    first = _wheel(tmp_path / "a.whl", base, day)
    assert compare_wheels(first, _wheel(tmp_path / "b.whl", base, day)).reproduced

    changed = compare_wheels(first, _wheel(tmp_path / "c.whl", {**base, "demo.py": b"VALUE = 2\n"}, day))
    assert (changed.reproduced, changed.differing) == (False, ("demo.py",))
    extra = compare_wheels(first, _wheel(tmp_path / "d.whl", {**base, "extra.py": b""}, day))
    assert extra.differing == ("extra.py",)
    later = compare_wheels(first, _wheel(tmp_path / "e.whl", base, (2025, 1, 1, 0, 0, 0)))
    assert (later.reproduced, later.note) == (False, "same contents; zip timestamps or modes differ")
    assert later.differing == ("demo-1.0.dist-info/RECORD", "demo.py")
    garbage = tmp_path / "f.whl"
    garbage.write_bytes(b"not a zip")
    assert compare_wheels(first, garbage).note.startswith("not comparable as zip archives")


def _record_of(records: list[dict[str, Any]], project: str) -> dict[str, Any]:
    (record,) = [r for r in records if r["project"] == project]
    return record


@needs_bwrap
def test_each_built_wheel_is_built_again_and_its_provenance_says_whether_it_was_reproduced(
    fake_upstream: FakeUpstreamServer, fake_index: FakeIndex, clock: FakeClock, tmp_path: Path
) -> None:
    sdists = tmp_path / "sdists"
    for project, body in (("same-every-time", FIXED_TIMES), ("random-every-time", RANDOM_VALUE)):
        fake_index.add_file(project, FakeFile.from_path(in_tree_backend_sdist(sdists, project, "1.0", body)))
    proxy = start_builder_proxy(fake_upstream, clock, tmp_path / "cache", builder_reproduce=True)
    try:
        for project in ("same-every-time", "random-every-time"):
            (link,) = pending_links(page(proxy, project))
            assert httpx.get(absolute(proxy, project, link["url"]), timeout=60).status_code == 200
        deadline = time.monotonic() + 120
        records = build_records(proxy)
        while len(records) < 2 or any(r.get("reproduced") is None for r in records):
            assert time.monotonic() < deadline, f"no verdict yet: {records}"
            time.sleep(0.3)
            records = build_records(proxy)

        same = _record_of(records, "same-every-time")
        assert same["reproduced"] is True
        random = _record_of(records, "random-every-time")
        assert random["reproduced"] is False
        assert random["differing"] == ["random_every_time-1.0.dist-info/RECORD", "random_every_time.py"]

        # The verdict is in the signed statement (signed again once it was known), on the page's attestation.
        published = httpx.get(proxy.url + "/.well-known/wheelfarm/keys.json").json()
        keys = [KnownKey.from_json(each).key for each in published["keys"]]
        for record, reproduced in ((same, True), (random, False)):
            scope = httpx.URL(f"{proxy.url}/t/{TARGET}/simple/{record['project']}/")
            listed = httpx.get(scope.join("?format=json")).json()["files"]
            (entry,) = [e for e in listed if e["filename"] == record["wheel"]]
            envelope = httpx.get(scope.join(entry["_wheelfarm"]["attestation"])).content
            statement = verified_statement(envelope, keys, str(record["wheel"]), str(record["wheel_sha256"]))
            verdict = statement["predicate"]["runDetails"]["metadata"]["wheelfarm_reproducibility"]
            assert verdict["reproduced"] is reproduced
            assert verdict["differing"] == record.get("differing", [])
            payload = json.loads(base64.b64decode(json.loads(envelope)["payload"]))
            assert payload == statement

        summary = httpx.get(proxy.url + "/admin/api/summary").json()
        assert summary["reproducibility"] == {
            "reproduced": 1,
            "not_reproduced": 1,
            "unchecked": 0,
            "share": 0.5,
        }
        metrics = httpx.get(proxy.url + "/metrics").text
        assert 'wheelfarm_built_wheels_reproducibility{verdict="reproduced"} 1.0' in metrics
        assert 'wheelfarm_built_wheels_reproducibility{verdict="not_reproduced"} 1.0' in metrics

        # wheelfarm verify says what the signed verdict is, and --require-reproduced holds a wheel to it.
        for record in (same, random):
            scope = httpx.URL(f"{proxy.url}/t/{TARGET}/simple/{record['project']}/")
            (entry,) = [e for e in httpx.get(scope.join("?format=json")).json()["files"]
                        if e["filename"] == record["wheel"]]  # fmt: skip
            (tmp_path / str(record["wheel"])).write_bytes(httpx.get(scope.join(entry["url"])).content)
        ran = subprocess.run(
            [str(WHEELFARM), "verify", "--farm", proxy.url, "--require-reproduced",
             str(tmp_path / str(same["wheel"])), str(tmp_path / str(random["wheel"]))],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert ran.returncode == 1, ran.stdout + ran.stderr
        lines = dict(line.split(" ", 1) for line in ran.stdout.splitlines())
        assert lines["OK"].endswith("; reproduced by urn:wheelfarm:builder:farm (the builder that made it)")
        assert lines["FAIL"].endswith(
            "; NOT reproduced by urn:wheelfarm:builder:farm (the builder that made it): "
            "random_every_time-1.0.dist-info/RECORD, random_every_time.py (--require-reproduced)"
        ), lines["FAIL"]

        # The admin page shows each verdict on its build's row, and the share.
        with Browser(tmp_path / "chromium") as browser:
            browser.open(f"{proxy.url}/admin/", 1280, 900)
            browser.wait_for("document.querySelectorAll('#finished tr[data-state] .badge.reproduced, "
                             "#finished tr[data-state] .badge.differs').length === 2")  # fmt: skip
            shown = browser.evaluate(
                "Object.fromEntries([...document.querySelectorAll('#finished tr[data-state]')].map(row =>"
                " [row.cells[0].textContent, [...row.querySelectorAll('.badge.reproduced, .badge.differs')]"
                ".map(b => [b.textContent, b.title])[0]]))"
            )
            share = browser.evaluate(
                "document.querySelector('[data-stat=\"reproducibility.share\"]').textContent"
            )
        assert shown["same-every-time"] == ["reproduced", "built again by farm: byte for byte the same"]
        label, title = shown["random-every-time"]
        assert label == "not reproduced"
        assert "random_every_time.py" in title
        assert share == "50.0% (1 of 2)"
    finally:
        proxy.stop()


@needs_bwrap
def test_a_wheel_built_before_a_restart_still_gets_its_second_build(
    fake_upstream: FakeUpstreamServer, fake_index: FakeIndex, clock: FakeClock, tmp_path: Path
) -> None:
    """The queue of second builds is in memory: at start, every served wheel without a verdict is queued
    again (a restart between the build and its second build, or a wheel built with second builds off)."""
    sdist = in_tree_backend_sdist(tmp_path / "sdists", "same-every-time", "1.0", FIXED_TIMES)
    fake_index.add_file("same-every-time", FakeFile.from_path(sdist))
    cache = tmp_path / "cache"
    proxy = start_builder_proxy(fake_upstream, clock, cache, builder_reproduce=False)
    try:
        (link,) = pending_links(page(proxy, "same-every-time"))
        assert httpx.get(absolute(proxy, "same-every-time", link["url"]), timeout=60).status_code == 200
        (record,) = build_records(proxy)
        assert record.get("reproduced") is None
    finally:
        proxy.stop()
    proxy = start_builder_proxy(fake_upstream, clock, cache, builder_reproduce=True)
    try:
        deadline = time.monotonic() + 120
        while (record := build_records(proxy)[0]).get("reproduced") is None:
            assert time.monotonic() < deadline, f"no verdict after the restart: {record}"
            time.sleep(0.3)
        assert record["reproduced"] is True
        published = httpx.get(proxy.url + "/.well-known/wheelfarm/keys.json").json()
        keys = [KnownKey.from_json(each).key for each in published["keys"]]
        sha = str(record["wheel_sha256"])
        envelope = httpx.get(f"{proxy.url}/.well-known/wheelfarm/attestations/{sha}").content
        statement = verified_statement(envelope, keys, str(record["wheel"]), sha)
        verdict = statement["predicate"]["runDetails"]["metadata"]["wheelfarm_reproducibility"]
        assert verdict["reproduced"] is True
        assert verdict["second_builder"] == "urn:wheelfarm:builder:farm"
    finally:
        proxy.stop()


@needs_bwrap
def test_the_test_projects_are_reproduced_unless_their_backend_stamps_the_time(
    fake_upstream: FakeUpstreamServer, build_index: FakeIndex, clock: FakeClock, tmp_path: Path
) -> None:
    """The sdist-only test projects that build: setuptools ones (pure, and a C extension repaired by
    auditwheel) come out of their second build with the same bytes (SOURCE_DATE_EPOCH, the fixed build path
    and the same build requirements make the farm's builds deterministic); a backend that stamps the build's
    time into its zip entries does not, and the verdict says so."""
    projects = ("tinypure", "tinynative", "slowpkg")
    proxy = start_builder_proxy(fake_upstream, clock, tmp_path / "cache", builder_reproduce=True)
    try:
        for project in projects:
            (link,) = pending_links(page(proxy, project))
            built = httpx.get(absolute(proxy, project, link["url"]), timeout=300)
            assert built.status_code == 200, built.text[:500]
        deadline = time.monotonic() + 300
        records = build_records(proxy)
        while any(r.get("reproduced") is None for r in records):
            assert time.monotonic() < deadline, f"no verdict yet: {records}"
            time.sleep(0.5)
            records = build_records(proxy)
        verdicts = {r["project"]: (r["reproduced"], r.get("reproduction_note")) for r in records}
        # The in-tree test backend writes zip entries with the time of the build (zipfile's default), not
        # SOURCE_DATE_EPOCH: its verdict names every member and says only their timestamps differ.
        assert verdicts == {
            "tinypure": (True, None),
            "tinynative": (True, None),
            "slowpkg": (False, "same contents; zip timestamps or modes differ"),
        }, verdicts
        assert _record_of(records, "slowpkg")["differing"] == [
            "slowpkg-1.0.dist-info/METADATA", "slowpkg-1.0.dist-info/RECORD", "slowpkg-1.0.dist-info/WHEEL",
            "slowpkg.py",
        ]  # fmt: skip
        native = _record_of(records, "tinynative")["wheel"]
        assert "manylinux" in native, native  # repaired by auditwheel, and still the same bytes
    finally:
        proxy.stop()


# The peak RSS of this process's own memory (VmHWM): getrusage's ru_maxrss keeps the forking parent's across
# the exec, and a pytest worker late in a full run holds a gigabyte.
_COMPARE_AND_MEASURE = """
import re, sys
from pathlib import Path
from builder.reproduce import compare_wheels
verdict = compare_wheels(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
print(verdict.reproduced, verdict.differing, verdict.note, sep="|")
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text())[1]) // 1024)
"""


def test_comparing_a_zip_bomb_holds_no_member_in_memory_and_is_capped(tmp_path: Path) -> None:
    """Both wheels compared may be hostile (a build's output, a remote builder's second build, a wheel a
    farm served to verify --rebuild): a member is hashed as it inflates, and the inflated total is capped."""
    bomb = tmp_path / "bomb-1.0-py3-none-any.whl"
    with (
        zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive,
        archive.open("bomb/data.bin", "w", force_zip64=True) as member,
    ):
        for _ in range(32):
            member.write(bytes(8 << 20))  # 256 MiB of zeros, about 256 KiB deflated
    small = _wheel(tmp_path / "small-1.0-py3-none-any.whl", {"bomb/data.bin": b"x"}, (1980, 1, 1, 0, 0, 0))

    def compare(cap: int) -> tuple[str, int]:
        ran = subprocess.run(
            [sys.executable, "-c", _COMPARE_AND_MEASURE, str(bomb), str(small), str(cap)],
            capture_output=True, text=True, timeout=120, check=True, cwd=Path(__file__).parent.parent,
        )  # fmt: skip
        verdict, rss = ran.stdout.splitlines()
        return verdict, int(rss)

    verdict, rss_mib = compare(1 << 30)
    assert verdict == "False|('bomb/data.bin',)|"
    assert rss_mib < 128, f"comparing took {rss_mib} MiB: a member was held whole"
    verdict, _ = compare(64 << 20)
    assert verdict == f"False|()|not comparable as zip archives: {bomb.name} inflates past {64 << 20} bytes"
