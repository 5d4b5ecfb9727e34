"""The fake upstream index itself: pages, conditional requests, counters and fault knobs."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from conftest import PROVENANCE, PROVENANCE_FILE, YANK_REASON
from fake_upstream import HTML_V1, JSON_V1, ROOT_PAGE, TEXT_HTML, FakeUpstreamServer, negotiate
from servers import ServerThread

# What pip sends (PEP 691).
PIP_ACCEPT = f"{JSON_V1}, {HTML_V1}; q=0.1, {TEXT_HTML}; q=0.01"
WHEEL_20 = "tinypure-2.0-py3-none-any.whl"
SDIST_11 = "tinypure-1.1.tar.gz"


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def get_json(http: httpx.Client, server: FakeUpstreamServer, path: str) -> tuple[httpx.Response, Any]:
    response = http.get(f"{server.url}{path}", headers={"Accept": PIP_ACCEPT})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == JSON_V1
    return response, response.json()


def test_json_project_page(fake_upstream: FakeUpstreamServer, http: httpx.Client) -> None:
    response, page = get_json(http, fake_upstream, "/simple/tinypure/")

    assert page["meta"] == {"api-version": "1.1", "_last-serial": fake_upstream.index.serials["tinypure"]}
    assert response.headers["X-PyPI-Last-Serial"] == str(page["meta"]["_last-serial"])
    assert page["name"] == "tinypure"
    assert page["versions"] == ["1.0", "1.1", "2.0"]
    files = {file["filename"]: file for file in page["files"]}
    # Sorted by (version, filename), like warehouse: 1.0 wheel, 1.0 sdist, 1.1 wheel, ...
    names = [file["filename"] for file in page["files"]]
    assert names == sorted(names)
    assert len(names) == 6
    assert files[SDIST_11]["yanked"] == YANK_REASON
    assert files["tinypure-1.0.tar.gz"]["yanked"] is False
    # Like PyPI: no key for data a file does not have.
    assert "core-metadata" not in files["tinypure-1.0.tar.gz"]
    assert "provenance" not in files["tinypure-1.0.tar.gz"]
    wheel = files[WHEEL_20]
    assert wheel["requires-python"] == ">=3.8"
    assert wheel["url"] == fake_upstream.file_url(WHEEL_20)
    assert wheel["upload-time"] == "2024-01-02T03:04:05.000000Z"

    content = http.get(wheel["url"]).content
    assert wheel["hashes"] == {"sha256": hashlib.sha256(content).hexdigest()}
    assert wheel["size"] == len(content)
    metadata = http.get(wheel["url"] + ".metadata").content
    assert metadata.startswith(b"Metadata-Version: ")
    assert b"Requires-Python: >=3.8" in metadata
    assert wheel["core-metadata"] == {"sha256": hashlib.sha256(metadata).hexdigest()}
    assert "dist-info-metadata" not in wheel  # PEP 714: only the new name in JSON, as PyPI writes it
    assert wheel["provenance"] == f"{fake_upstream.url}/provenance/{PROVENANCE_FILE}"
    assert http.get(wheel["provenance"]).content == PROVENANCE

    index = fake_upstream.index
    assert (index.page_requests["tinypure"], index.file_requests[WHEEL_20]) == (1, 1)
    assert (index.metadata_requests[WHEEL_20], index.provenance_requests[WHEEL_20]) == (1, 1)


def test_html_project_page(fake_upstream: FakeUpstreamServer, http: httpx.Client) -> None:
    response = http.get(fake_upstream.project_url("tinypure"))
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    lines = {line.split(">")[1].split("<")[0]: line for line in response.text.splitlines() if "<a " in line}
    wheel = fake_upstream.index.file(WHEEL_20)
    assert f'href="{fake_upstream.file_url(WHEEL_20)}#sha256={wheel.sha256}"' in lines[WHEEL_20]
    assert 'data-requires-python="&gt;=3.8"' in lines[WHEEL_20]
    assert 'data-core-metadata="sha256=' in lines[WHEEL_20]
    assert 'data-dist-info-metadata="sha256=' in lines[WHEEL_20]
    assert f'data-provenance="{fake_upstream.url}/provenance/{WHEEL_20}"' in lines[WHEEL_20]
    assert f'data-yanked="{YANK_REASON}"' in lines[SDIST_11]
    assert "data-" not in lines["tinypure-1.0.tar.gz"]

    explicit = http.get(fake_upstream.project_url("tinypure"), headers={"Accept": HTML_V1})
    assert explicit.headers["Content-Type"] == HTML_V1
    assert explicit.content == response.content


def test_root_list(fake_upstream: FakeUpstreamServer, http: httpx.Client) -> None:
    _, root = get_json(http, fake_upstream, "/simple/")
    assert root["projects"] == [{"name": "tinydep"}, {"name": "tinypure"}]
    assert root["meta"]["_last-serial"] == max(fake_upstream.index.serials.values())
    html = http.get(fake_upstream.simple_url).text
    assert html.index('href="/simple/tinydep/"') < html.index('href="/simple/tinypure/"')
    assert fake_upstream.index.page_requests[ROOT_PAGE] == 2


def test_etag_and_serials(fake_upstream: FakeUpstreamServer, http: httpx.Client) -> None:
    index = fake_upstream.index
    url = fake_upstream.project_url("tinydep")
    first, _ = get_json(http, fake_upstream, "/simple/tinydep/")
    etag = first.headers["ETag"]
    assert etag.startswith('"')

    again = http.get(url, headers={"Accept": PIP_ACCEPT, "If-None-Match": f'"other", W/{etag}'})
    assert (again.status_code, again.content, again.headers["ETag"]) == (304, b"", etag)
    assert (index.page_requests["tinydep"], index.conditional_hits["tinydep"]) == (2, 1)

    serial = index.touch("TinyDep")
    changed, page = get_json(http, fake_upstream, "/simple/tinydep/")
    assert changed.headers["ETag"] != etag
    assert page["meta"]["_last-serial"] == serial

    index.last_serial["tinydep"] = 1  # a stale copy
    stale = http.get(url, headers={"If-None-Match": etag})
    assert stale.headers["X-PyPI-Last-Serial"] == "1"


def test_mutations_bump_serial(fake_upstream: FakeUpstreamServer, http: httpx.Client) -> None:
    index = fake_upstream.index
    before = index.serials["tinypure"]
    index.unyank(SDIST_11)
    assert index.serials["tinypure"] > before
    index.remove_file(WHEEL_20)
    _, page = get_json(http, fake_upstream, "/simple/tinypure/")
    assert WHEEL_20 not in [file["filename"] for file in page["files"]]
    assert next(file for file in page["files"] if file["filename"] == SDIST_11)["yanked"] is False
    index.yank(SDIST_11)  # without a reason
    assert 'data-yanked=""' in http.get(fake_upstream.project_url("tinypure")).text
    assert http.get(fake_upstream.file_url(WHEEL_20)).status_code == 404


def test_redirects_and_missing(fake_upstream: FakeUpstreamServer, http: httpx.Client) -> None:
    response = http.get(f"{fake_upstream.url}/simple/Tiny_Pure/")
    assert (response.status_code, response.headers["Location"]) == (301, "/simple/tiny-pure/")
    assert http.get(f"{fake_upstream.url}/simple/tinypure").headers["Location"] == "/simple/tinypure/"
    assert http.get(fake_upstream.project_url("no-such-project")).status_code == 404
    assert http.get(fake_upstream.file_url("tinypure-1.0.tar.gz.metadata")).status_code == 404


def test_status_knobs_and_html_only(fake_upstream: FakeUpstreamServer, http: httpx.Client) -> None:
    index = fake_upstream.index
    index.page_status["tinypure"] = 503
    index.root_status = 500
    assert http.get(fake_upstream.project_url("tinypure")).status_code == 503
    assert http.get(fake_upstream.simple_url).status_code == 500
    assert http.get(fake_upstream.project_url("tinydep")).status_code == 200

    index.html_only = True
    response = http.get(fake_upstream.project_url("tinydep"), headers={"Accept": JSON_V1})
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"


def test_truncated_download(fake_upstream: FakeUpstreamServer, http: httpx.Client) -> None:
    fake_upstream.index.truncate_files[WHEEL_20] = 100
    with pytest.raises(httpx.RemoteProtocolError):
        http.get(fake_upstream.file_url(WHEEL_20))
    assert fake_upstream.index.file_requests[WHEEL_20] == 1
    # The server survives and serves the next request.
    assert http.get(fake_upstream.project_url("tinypure")).status_code == 200


def test_corrupt_and_chunked_download(fake_upstream: FakeUpstreamServer, http: httpx.Client) -> None:
    index = fake_upstream.index
    wheel = index.file(WHEEL_20)
    index.corrupt_files.append(WHEEL_20)
    index.file_chunk, index.file_delay = 256, 0.001
    response = http.get(fake_upstream.file_url(WHEEL_20))
    assert response.headers["Content-Length"] == str(len(wheel.content))
    assert len(response.content) == len(wheel.content)
    assert hashlib.sha256(response.content).hexdigest() != wheel.sha256

    index.corrupt_files.clear()
    assert http.get(fake_upstream.file_url(WHEEL_20)).content == wheel.content


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, TEXT_HTML),
        ("", TEXT_HTML),
        ("*/*", TEXT_HTML),
        (PIP_ACCEPT, JSON_V1),
        ("application/vnd.pypi.simple.latest+json", JSON_V1),
        (f"{JSON_V1}; q=0.5, {HTML_V1}", HTML_V1),
        ("application/*, text/html; q=0.2", HTML_V1),
        ("image/png", TEXT_HTML),
        (f"{JSON_V1}; q=oops, ;;, ,text/html;q=0.3", TEXT_HTML),
    ],
)
def test_negotiate(accept: str | None, expected: str) -> None:
    assert negotiate(accept) == expected


def test_server_thread_with_factory() -> None:
    events: list[str] = []

    async def factory() -> web.Application:
        app = web.Application()

        async def context(app: web.Application) -> AsyncIterator[None]:
            events.append("startup")
            yield
            events.append("cleanup")

        async def hello(request: web.Request) -> web.Response:
            return web.Response(text="hello")

        app.cleanup_ctx.append(context)
        app.router.add_get("/", hello)
        return app

    async def loop_is_running() -> bool:
        await asyncio.sleep(0)
        return asyncio.get_running_loop().is_running()

    with ServerThread(factory) as server:
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert httpx.get(server.url).text == "hello"
        assert server.run(loop_is_running())
        assert events == ["startup"]
    assert events == ["startup", "cleanup"]
    server.stop()  # idempotent
