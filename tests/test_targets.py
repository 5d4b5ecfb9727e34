"""Pure parts: targets from User-Agents, tag sets, the overlay's choice of releases, the blob index."""

from __future__ import annotations

import fnmatch

import pytest
from fakes import FakeClock
from hypothesis import given
from hypothesis import strategies as st
from packaging.tags import Tag

from builder.jobs import BuildKey, InvalidBuildKey
from builder.tags import InvalidTarget, Target, target_from_user_agent
from proxy.builds.embedded import BuildPolicy
from proxy.index.model import DistFile, ProjectPage
from proxy.index.names import NormalizedName
from proxy.index.overlay import apply_overlay, pending_filename, releases_needing_wheels
from proxy.storage.blobindex import BlobIndex

PIP_UA = (
    'pip/26.3 {"ci":null,"cpu":"x86_64","distro":{"id":"bookworm","libc":{"lib":"glibc","version":"2.36"},'
    '"name":"Debian GNU/Linux","version":"12"},"implementation":{"name":"CPython","version":"3.11.7"},'
    '"installer":{"name":"pip","version":"26.3"},"openssl_version":"OpenSSL 3.0.11","python":"3.11.7",'
    '"setuptools_version":"65.5.0","system":{"name":"Linux","release":"6.18.44"},"user_data":null}'
)
UV_UA = (
    'uv/0.13.9 {"installer":{"name":"uv","version":"0.13.9","subcommand":["pip","install"]},'
    '"python":"3.12.1","implementation":{"name":"CPython","version":"3.12.1"},"distro":{"name":"Debian '
    'GNU/Linux","version":"12","id":"bookworm","libc":{"lib":"musl","version":"1.2"}},"system":{"name":'
    '"Linux","release":"6.1.0"},"cpu":"aarch64","openssl_version":null,"setuptools_version":null,'
    '"rustc_version":null,"ci":null}'
)
SHA = "c" * 64


def test_pip_and_uv_user_agents_name_their_target() -> None:
    assert str(target_from_user_agent(PIP_UA)) == "cp311-manylinux_2_36_x86_64"
    assert str(target_from_user_agent(UV_UA)) == "cp312-musllinux_1_2_aarch64"


@pytest.mark.parametrize(
    "agent",
    [
        None,
        "",
        "curl/8.0",
        "pip/26.3 {not json",
        "pip/26.3 []",
        'pip/26.3 {"implementation":{"name":"PyPy","version":"3.10"},"cpu":"x86_64"}',
        'pip/26.3 {"implementation":{"name":"CPython","version":"3.11.7"},"cpu":"x86_64",'
        '"system":{"name":"Darwin"}}',
        'pip/26.3 {"implementation":{"name":"CPython","version":"3.11.7"},"cpu":"x86_64",'
        '"system":{"name":"Linux"}}',
        'uv/1 {"implementation":{"name":"CPython","version":"2.7.18"},"cpu":"x86_64",'
        '"system":{"name":"Linux"},"distro":{"libc":{"lib":"glibc","version":"2.36"}}}',
    ],
)
def test_unknown_or_partial_agents_give_no_target(agent: str | None) -> None:
    assert target_from_user_agent(agent) is None


@given(st.text(max_size=400))
def test_any_user_agent_is_read_without_raising(agent: str) -> None:
    target_from_user_agent("pip/1 " + agent)
    target_from_user_agent(agent)


def test_tag_sets() -> None:
    target = Target.parse("cp311-manylinux_2_36_x86_64")
    assert target.supports(frozenset({Tag("cp311", "cp311", "manylinux_2_17_x86_64")}))
    assert target.supports(frozenset({Tag("cp311", "cp311", "manylinux2014_x86_64")}))
    assert target.supports(frozenset({Tag("py3", "none", "any")}))
    assert target.supports(frozenset({Tag("cp38", "abi3", "manylinux_2_5_x86_64")}))
    assert not target.supports(frozenset({Tag("cp311", "cp311", "manylinux_2_38_x86_64")}))
    assert not target.supports(frozenset({Tag("cp312", "cp312", "manylinux_2_17_x86_64")}))
    assert not target.supports(frozenset({Tag("cp311", "cp311", "musllinux_1_2_x86_64")}))
    assert target.ordered_tags[0] == Tag("cp311", "cp311", "manylinux_2_36_x86_64")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "cp311",
        "cp311-win_amd64",
        "py3-none-any",
        "cp311-manylinux_2_36",
        "cp2-x",
        "cp311-manylinux_2_36_x86_64\n",
    ],
)
def test_invalid_targets_name_the_input(text: str) -> None:
    with pytest.raises(InvalidTarget, match="not a target"):
        Target.parse(text)


@pytest.mark.parametrize(
    ("sha", "target"),
    [
        ("a" * 63, "cp311-manylinux_2_36_x86_64"),
        ("A" * 64, "cp311-manylinux_2_36_x86_64"),
        ("a" * 64 + "\n", "cp311-manylinux_2_36_x86_64"),
        ("a" * 64, "cp311-manylinux_2_36_x86_64\n"),
        ("a" * 64, "../cp311"),
        ("a" * 64, "cp311-x/y"),
    ],
)
def test_build_keys_from_untrusted_text_must_be_exact(sha: str, target: str) -> None:
    """Both parts become file and URL path segments: anything but the exact spelling is refused."""
    with pytest.raises(InvalidBuildKey, match="not a build key"):
        BuildKey.checked(sha, target)
    assert BuildKey.checked("a" * 64, "cp311-manylinux_2_36_x86_64") == BuildKey(
        "a" * 64, "cp311-manylinux_2_36_x86_64"
    )


def dist(filename: str, **fields: object) -> DistFile:
    return DistFile(filename=filename, url="https://x/" + filename, hashes={"sha256": SHA}, **fields)  # type: ignore[arg-type]


def test_overlay_picks_sdist_only_releases_for_the_target() -> None:
    target = Target.parse("cp311-manylinux_2_36_x86_64")
    page = ProjectPage(
        NormalizedName("demo"),
        (
            dist("demo-1.0.tar.gz"),
            dist("demo-1.0-py3-none-any.whl"),  # covered
            dist("demo-2.0.tar.gz"),
            dist("demo-2.0-cp312-cp312-manylinux_2_17_x86_64.whl"),  # other Python: not covered
            dist("demo-3.0.tar.gz", requires_python=">=3.12"),  # the target cannot run it
            dist("demo-4.0.zip"),
            dist("demo-4.0.tar.gz"),  # .tar.gz preferred
            dist("demo-5.0.tar.gz", yanked="bad"),
            dist("demo-5.0-py3-none-any.whl", yanked="bad"),  # yanked with its sdist: covered
            dist("demo-6.0.tar.gz"),
            dist("demo-6.0-py3-none-any.whl", yanked=True),  # yanked wheel, sdist not: not covered
            DistFile("demo-7.0.tar.gz", "https://x/demo-7.0.tar.gz"),  # no sha256: cannot be built
            dist("demo-8.0.tar.gz"),
            dist("demo-8.0-py3-none-any.whl", yanked=True),
            dist("demo-8.0-py2.py3-none-any.whl"),  # one wheel of the release not yanked: covered
        ),
    )
    chosen = [(str(version), sdist.filename) for version, sdist in releases_needing_wheels(page, target)]
    assert chosen == [("2.0", "demo-2.0.tar.gz"), ("4.0", "demo-4.0.tar.gz"), ("6.0", "demo-6.0.tar.gz")]
    overlaid = apply_overlay(page, (target,), lambda version, sdist, target: (dist(f"x-{version}.whl"),))
    names = [f.filename for f in overlaid.files]
    assert names[names.index("demo-2.0.tar.gz") + 1] == "x-2.0.whl"
    assert len(names) == len(page.files) + 3
    assert pending_filename(
        "zope-interface", next(iter(releases_needing_wheels(page, target)))[0], target
    ) == ("zope_interface-2.0-cp311-cp311-manylinux_2_36_x86_64.whl")


def test_blob_index_evicts_least_recently_used_but_never_leased() -> None:
    clock = FakeClock()
    index = BlobIndex(clock)
    for key in ("a", "b", "c"):
        index.added(key, 100)
        clock.advance(1)
    index.touched("a")
    assert index.over_limit(150) == ["b", "c"]
    with index.lease("b"):
        assert index.over_limit(150) == ["c", "a"]
        assert index.unused_since(clock.now() + 1) == ["a", "c"]
    assert index.over_limit(300) == []
    index.removed("a")
    assert index.total_bytes == 200


@given(
    st.text(alphabet="abc-*?[]!", max_size=6),
    st.lists(st.text(alphabet="abc-*?[]!", min_size=1, max_size=4), max_size=3),
)
def test_build_policy_matches_names_as_fnmatchcase_does(name: str, patterns: list[str]) -> None:
    """The policy compiles its patterns into one regex (it is asked on every page): same answers."""
    policy = BuildPolicy(allow=tuple(patterns), deny=())
    allowed = any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
    assert (policy.why_not(name) is None) == allowed
    assert (BuildPolicy(deny=tuple(patterns)).why_not(name) is None) == (not allowed)
