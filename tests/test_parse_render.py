from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.index.model import DistFile, PageFormat, ProjectPage, ProjectState, ProjectStatus
from proxy.index.names import NormalizedName
from proxy.index.parse import UpstreamPageError, parse_project_html, parse_project_json
from proxy.index.render import render_project, render_project_html, render_project_json, render_root_html
from proxy.index.urls import proxied_page

PAGE_URL = "https://index.example/simple/demo/"
NAME = NormalizedName("demo")
SHA = "a" * 64
META_SHA = "b" * 64

UPSTREAM_JSON = {
    "meta": {"api-version": "1.3", "_last-serial": 42},
    "name": "demo",
    "versions": ["1.0", "1.1"],
    "files": [
        {
            "filename": "demo-1.0.tar.gz",
            "url": "https://files.example/packages/demo-1.0.tar.gz",
            "hashes": {"sha256": SHA.upper()},
            "requires-python": ">=3.8,<4",
            "yanked": False,
            "size": 1234,
            "upload-time": "2024-01-02T03:04:05.000000Z",
        },
        {
            "filename": "demo-1.1-py3-none-any.whl",
            "url": "../../packages/demo-1.1-py3-none-any.whl",
            "hashes": {"sha256": SHA},
            "yanked": 'broken <b>"build"</b>',
            "dist-info-metadata": {"sha256": META_SHA},
            "provenance": "https://files.example/provenance/demo-1.1",
        },
    ],
}


def test_json_page_keeps_every_field() -> None:
    page = parse_project_json(orjson.dumps(UPSTREAM_JSON), PAGE_URL, NAME)
    sdist, wheel = page.files
    assert page.last_serial == 42
    assert page.versions == ("1.0", "1.1")
    assert sdist.sha256 == SHA
    assert sdist.requires_python == ">=3.8,<4"
    assert sdist.size == 1234
    assert sdist.upload_time == "2024-01-02T03:04:05.000000Z"
    assert sdist.yanked is False
    assert wheel.url == "https://index.example/packages/demo-1.1-py3-none-any.whl"  # relative resolved
    assert wheel.yanked == 'broken <b>"build"</b>'
    assert wheel.metadata_sha256 == META_SHA  # PEP 714: the old key is still understood
    assert wheel.provenance == "https://files.example/provenance/demo-1.1"


def test_rendered_json_sends_the_pep_714_metadata_key_and_rewritten_urls() -> None:
    page = proxied_page(parse_project_json(orjson.dumps(UPSTREAM_JSON), PAGE_URL, NAME))
    data = orjson.loads(render_project_json(page))
    assert data["meta"] == {"api-version": "1.4", "_last-serial": 42}
    wheel = data["files"][1]
    assert wheel["url"] == f"../../files/demo/{SHA}/demo-1.1-py3-none-any.whl"
    assert wheel["core-metadata"] == {"sha256": META_SHA}
    assert "dist-info-metadata" not in wheel  # pip 22.3 to 23.1 crash on it in JSON
    assert wheel["provenance"] == wheel["url"] + ".provenance"
    assert data["versions"] == ["1.0", "1.1"]


def test_html_escapes_every_value() -> None:
    page = parse_project_json(orjson.dumps(UPSTREAM_JSON), PAGE_URL, NAME)
    html = render_project_html(page).decode()
    assert "<b>" not in html
    assert 'data-yanked="broken &lt;b&gt;&quot;build&quot;&lt;/b&gt;"' in html
    assert 'data-requires-python="&gt;=3.8,&lt;4"' in html
    assert f'data-core-metadata="sha256={META_SHA}"' in html
    assert f'data-dist-info-metadata="sha256={META_SHA}"' in html


def test_html_round_trip_keeps_yank_metadata_and_provenance() -> None:
    page = parse_project_json(orjson.dumps(UPSTREAM_JSON), PAGE_URL, NAME)
    again = parse_project_html(render_project_html(page), PAGE_URL, NAME, serial=42)
    for before, after in zip(page.files, again.files, strict=True):
        assert after.filename == before.filename
        assert after.sha256 == before.sha256
        assert after.yanked == before.yanked
        assert after.requires_python == before.requires_python
        assert after.core_metadata == before.core_metadata
        assert after.provenance == before.provenance


def test_html_yank_without_reason_and_metadata_without_hash() -> None:
    body = b'<a href="f-1.0.tar.gz" data-yanked data-dist-info-metadata="true">f-1.0.tar.gz</a>'
    (dist,) = parse_project_html(body, PAGE_URL, NAME, None).files
    assert dist.yanked is True
    assert dist.core_metadata is True
    assert dist.url == "https://index.example/simple/demo/f-1.0.tar.gz"
    assert dist.hashes == {}


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"files": 3}', b'{"files": [{"url": "x"}]}', b'{"files": [{"filename": "a"}]}'],
)
def test_unusable_json_names_the_problem(body: bytes) -> None:
    with pytest.raises(UpstreamPageError, match=r"demo|url"):
        parse_project_json(body, PAGE_URL, NAME)


def test_render_is_deterministic_with_a_strong_etag() -> None:
    page = parse_project_json(orjson.dumps(UPSTREAM_JSON), PAGE_URL, NAME)
    first = render_project(page, PageFormat.JSON_V1)
    assert render_project(page, PageFormat.JSON_V1) == first
    assert first.etag.startswith('"')
    assert first.etag.endswith('"')
    assert render_project(page, PageFormat.HTML_V1).etag != first.etag


def test_root_html_links_are_relative_and_normalised() -> None:
    html = b"".join(render_root_html(["Django", "zope.interface", "<script>"])).decode()
    assert '<a href="django/">Django</a>' in html
    assert '<a href="zope-interface/">zope.interface</a>' in html
    assert "<script>" not in html


text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=40)


@given(
    reason=st.one_of(st.just(True), st.just(False), text.filter(bool)),
    requires=st.one_of(st.none(), text),
)
def test_html_round_trip_property(reason: bool | str, requires: str | None) -> None:
    dist = DistFile(
        filename="p-1.0.tar.gz",
        url="https://index.example/f/p-1.0.tar.gz",
        hashes={"sha256": SHA},
        requires_python=requires or None,
        yanked=reason,
    )
    page = ProjectPage(NAME, (dist,))
    (after,) = parse_project_html(render_project_html(page), PAGE_URL, NAME, None).files
    assert after.yanked == dist.yanked
    assert after.requires_python == dist.requires_python


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("quarantined", ProjectState.QUARANTINED),
        ("Archived", ProjectState.ARCHIVED),
        ("novel", ProjectState.ACTIVE),
    ],
)
def test_project_status_from_json_and_html(status: str, expected: ProjectState) -> None:
    """PEP 792; an unknown status counts as active. Parsing keeps every file (proxy/pages/policy.py drops a
    quarantined project's)."""
    document = {**UPSTREAM_JSON, "project-status": {"status": status, "reason": "why <not>"}}
    from_json = parse_project_json(orjson.dumps(document), PAGE_URL, NAME)
    html = (
        f'<html><head><meta name="pypi:project-status" content="{status}">'
        '<meta name="pypi:project-status-reason" content="why &lt;not&gt;"></head>'
        f'<body><a href="demo-1.0.tar.gz#sha256={SHA}">demo-1.0.tar.gz</a></body></html>'
    ).encode()
    from_html = parse_project_html(html, PAGE_URL, NAME, None)
    for parsed in (from_json, from_html):
        assert parsed.status == ProjectStatus(expected, "why <not>")
        assert parsed.files  # kept, whatever the status
    rendered = orjson.loads(render_project_json(from_json))
    assert rendered["project-status"] == {"status": expected.value, "reason": "why <not>"}
    assert rendered["meta"]["api-version"] == "1.4"
    assert b'content="why &lt;not&gt;"' in render_project_html(from_json)


def test_absent_metadata_and_provenance_keys_stay_absent() -> None:
    page = ProjectPage(NAME, (DistFile("demo-1.0.tar.gz", "https://files.example/demo-1.0.tar.gz"),))
    (entry,) = orjson.loads(render_project_json(page))["files"]
    assert set(entry) == {"filename", "url", "hashes", "requires-python", "yanked"}
