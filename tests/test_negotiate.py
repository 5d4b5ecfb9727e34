from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.index.model import PageFormat
from proxy.index.negotiate import choose_format

PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
)
UV_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.2, text/html; q=0.01"
)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (PIP_ACCEPT, PageFormat.JSON_V1),
        (UV_ACCEPT, PageFormat.JSON_V1),
        (None, PageFormat.LEGACY_HTML),
        ("", PageFormat.LEGACY_HTML),
        ("text/html", PageFormat.LEGACY_HTML),
        ("*/*", PageFormat.LEGACY_HTML),
        ("application/vnd.pypi.simple.v1+html", PageFormat.HTML_V1),
        ("application/vnd.pypi.simple.latest+json", PageFormat.JSON_V1),
        ("application/vnd.pypi.simple.v1+json;q=0.5, text/html;q=0.9", PageFormat.LEGACY_HTML),
        ("application/vnd.pypi.simple.v1+json;q=0, */*", PageFormat.LEGACY_HTML),
        ("application/vnd.pypi.simple.v1+html, application/vnd.pypi.simple.v1+json", PageFormat.JSON_V1),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", PageFormat.LEGACY_HTML),
    ],
)
def test_accept_header_picks_the_format_clients_expect(accept: str | None, expected: PageFormat) -> None:
    assert choose_format(accept) is expected


@pytest.mark.parametrize(
    "accept", ["application/json", "image/png", "application/vnd.pypi.simple.v2+json", "text/html;q=0"]
)
def test_nothing_acceptable_gives_none(accept: str) -> None:
    assert choose_format(accept) is None


def test_format_parameter_overrides_accept() -> None:
    assert choose_format("text/html", "application/vnd.pypi.simple.v1+json") is PageFormat.JSON_V1
    assert choose_format(PIP_ACCEPT, "html") is PageFormat.HTML_V1
    assert choose_format(PIP_ACCEPT, "bogus") is None


@pytest.mark.parametrize(
    "accept", [";;;,,,", "q=1", "text/html;q=abc", "*/*;q=nan", "a/b;q=1e999", "\x00/\x01"]
)
def test_malformed_headers_never_raise(accept: str) -> None:
    choose_format(accept)


@given(st.text(max_size=300), st.one_of(st.none(), st.text(max_size=40)))
def test_any_input_yields_a_format_or_none(accept: str, param: str | None) -> None:
    result = choose_format(accept, param)
    assert result is None or isinstance(result, PageFormat)
