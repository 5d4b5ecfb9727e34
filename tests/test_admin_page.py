"""The admin page (proxy/admin/admin.html) in a real headless Chromium, against a proxy that has built wheels.

The browser loads /admin/ from 127.0.0.1 and runs the page's script; `--dump-dom` gives the DOM it
rendered from the JSON API, `--screenshot` the pixels it painted (decoded here with zlib and struct only).
"""

from __future__ import annotations

import dataclasses
import struct
import subprocess
import zlib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from buildkit import ADMIN_TOKEN, absolute, page, pending_links
from cdp import Browser
from fakes import ProxyServer

CHROMIUM = Path("/usr/bin/chromium")
TOKEN = ADMIN_TOKEN
WIDTH, HEIGHT = 1280, 1024
# The cards' numbers, each an element with data-stat="<path into /admin/api/summary>".
STATS = [
    "pages.count", "pages.bytes",
    "files.count", "files.bytes", "files.max_bytes", "files.evictions",
    "built_wheels.count", "built_wheels.bytes",
    "cache.hit_ratio", "cache.hit", "cache.miss", "cache.stale", "cache.revalidated",
    "builds.queued", "builds.running", "builds.done", "builds.failed", "builds.orphaned",
    "reproducibility.share",
]  # fmt: skip
COUNTS = [path for path in STATS if not path.endswith(("bytes", "ratio", "share"))]


@pytest.fixture
def built_admin_proxy(admin_proxy: ProxyServer) -> ProxyServer:
    """The admin proxy after one successful and one failed build."""
    for project, sdist, status in (("tinypure", "tinypure-3.0.tar.gz", 200), ("brokenpkg", None, 422)):
        links = pending_links(page(admin_proxy, project))
        (link,) = [e for e in links if sdist is None or e["_wheelfarm"]["built-from"] == sdist]
        response = httpx.get(absolute(admin_proxy, project, link["url"]), timeout=120)
        assert response.status_code == status, response.text
    page(admin_proxy, "tinypure")  # a cache hit, so the hit ratio is neither 0 nor 1
    return admin_proxy


def chromium(url: str, profile: Path, *mode: str) -> subprocess.CompletedProcess[bytes]:
    """One headless Chromium run: a fresh profile, no network but 127.0.0.1, 5 s of virtual time."""
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: the admin page test needs a real browser "
            "(`make test` installs it; or `apt-get install -y chromium`)",
            pytrace=False,
        )
    command = [
        str(CHROMIUM),
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-extensions", "--disable-default-apps", "--no-default-browser-check",
        # Every host name fails to resolve: the page may only talk to the proxy on 127.0.0.1.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        *mode,
        url,
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")[-3000:]
    return completed


@dataclasses.dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element | str] = dataclasses.field(default_factory=list)

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def walk(self) -> Iterator[Element]:
        yield self
        for child in self.children:
            if isinstance(child, Element):
                yield from child.walk()

    def find(self, tag: str | None = None, **attrs: str) -> list[Element]:
        """Elements at or below this one with that tag (any, if None) and those attribute values."""
        return [
            e
            for e in self.walk()
            if tag in (None, e.tag) and all(e.attrs.get(k) == v for k, v in attrs.items())
        ]

    def by_id(self, element_id: str) -> Element:
        found = self.find(id=element_id)
        assert len(found) == 1, f"{len(found)} elements have id={element_id!r}"
        return found[0]


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class TreeBuilder(HTMLParser):
    """Chromium's serialized DOM back into a tree (it closes every non-void element it opens)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse_dom(html: str) -> Element:
    builder = TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


def lookup(data: dict[str, Any], path: str) -> Any:
    section, key = path.split(".")
    default = 0 if section in ("cache", "builds") else None  # outcomes and states not seen yet: zero
    return data[section].get(key, default)


def js_string(value: Any) -> str:
    """What the page's String(value) gives for a JSON number (or "" for null): JavaScript writes 0.0 as 0."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_admin_page_renders_the_api_in_chromium(built_admin_proxy: ProxyServer, tmp_path: Path) -> None:
    admin_proxy = built_admin_proxy
    summary = httpx.get(f"{admin_proxy.url}/admin/api/summary").json()
    builds = httpx.get(f"{admin_proxy.url}/admin/api/builds").json()
    finished = {record["project"]: record for record in builds["finished"]}
    assert {p: r["state"] for p, r in finished.items()} == {"tinypure": "done", "brokenpkg": "failed"}

    dump = chromium(f"{admin_proxy.url}/admin/#project=tinypure", tmp_path / "dom", "--dump-dom")
    dom = parse_dom(dump.stdout.decode())

    # The script ran, fetched both endpoints, and said so.
    assert dom.by_id("status").text().startswith("updated"), dom.by_id("status").text()
    assert dom.by_id("upstream").text() == summary["upstream"]
    # Every card number carries the API's value, and counts read as plain numbers.
    shown = {e.attrs["data-stat"]: e for e in dom.walk() if "data-stat" in e.attrs}
    assert sorted(shown) == sorted(STATS)
    for path in STATS:
        assert shown[path].attrs["data-value"] == js_string(lookup(summary, path)), path
    for path in COUNTS:
        assert shown[path].text() == str(lookup(summary, path)), path
    assert summary["builds"]["done"] == 1
    assert summary["builds"]["failed"] == 1
    assert 0 < summary["cache"]["hit_ratio"] < 1
    assert shown["built_wheels.bytes"].text().endswith(("B", "KiB", "MiB"))
    assert shown["cache.hit_ratio"].text().endswith("%")
    assert shown["reproducibility.share"].text() == "none checked yet"  # second builds are off here

    # Finished builds: one row each, state, wheel or failure, links to log and provenance.
    rows = {
        row.attrs["data-state"]: row
        for row in dom.by_id("finished").find(tag="tr")
        if "data-state" in row.attrs
    }
    assert sorted(rows) == ["done", "failed"]
    done, failed = rows["done"], rows["failed"]
    assert "tinypure" in done.text()
    assert "3.0" in done.text()
    assert finished["tinypure"]["wheel"] in done.text()
    assert "brokenpkg" in failed.text()
    assert finished["brokenpkg"]["error"] in failed.text()
    assert "exited with status 1" in failed.text()
    hrefs = {a.text(): a.attrs.get("href") for a in done.find(tag="a")}
    assert hrefs["log"] == admin_proxy.url + finished["tinypure"]["log"]
    assert hrefs["provenance"] == admin_proxy.url + finished["tinypure"]["provenance"]
    assert httpx.get(hrefs["provenance"] or "").json()["wheel"]["filename"] == finished["tinypure"]["wheel"]
    assert "Retry" in failed.text()  # only a failed build offers a retry
    assert "Retry" not in done.text()
    assert "No build is queued or running." in dom.by_id("active").text()
    builders = dom.by_id("builders").text()  # this proxy's own builder pool, live, with what it builds
    assert "this host" in builders
    assert "live" in builders
    assert "manylinux x86_64, Python 3.8" in builders
    assert " 3.11 " in builders

    # The lookup named in the URL's fragment shows the project's files and its build.
    project = dom.by_id("project").text()
    assert "tinypure-3.0.tar.gz" in project
    assert "cached" in project
    assert finished["tinypure"]["wheel"] in project


@dataclasses.dataclass(frozen=True)
class Png:
    width: int
    height: int
    rows: list[bytes]  # unfiltered scanlines, 3 or 4 bytes a pixel
    channels: int

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        at = x * self.channels
        r, g, b = self.rows[y][at : at + 3]
        return r, g, b


def decode_png(data: bytes) -> Png:
    """An 8-bit RGB(A), non-interlaced PNG (what Chromium writes) into pixel rows."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    header: tuple[int, ...] = ()
    idat = []
    at = 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        chunk = data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert zlib.crc32(kind + chunk) == crc, f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
        elif kind == b"IEND":
            break
        at += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert (depth, colour in (2, 6), interlace) == (8, True, 0), header
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    assert len(raw) == height * (stride + 1)
    return Png(width, height, unfilter(raw, height, stride, channels), channels)


def unfilter(raw: bytes, height: int, stride: int, bpp: int) -> list[bytes]:
    """Undo the per-row filters of the PNG spec, section 9 (None, Sub, Up, Average, Paeth)."""
    # Up adds the row above byte by byte; done on whole rows as big integers, with no carry between bytes.
    low = int.from_bytes(b"\x7f" * stride, "big")
    high = int.from_bytes(b"\x80" * stride, "big")
    rows: list[bytes] = []
    prev = bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], raw[start + 1 : start + 1 + stride]
        if kind == 0:
            out = line
        elif kind == 2:
            a, b = int.from_bytes(line, "big"), int.from_bytes(prev, "big")
            out = (((a & low) + (b & low)) ^ ((a ^ b) & high)).to_bytes(stride, "big")
        else:
            cur = bytearray(line)
            for i in range(stride):
                left = cur[i - bpp] if i >= bpp else 0
                if kind == 1:
                    cur[i] = (cur[i] + left) & 255
                elif kind == 3:
                    cur[i] = (cur[i] + ((left + prev[i]) >> 1)) & 255
                elif kind == 4:
                    up, corner = prev[i], prev[i - bpp] if i >= bpp else 0
                    p = left + up - corner
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                    predictor = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                    cur[i] = (cur[i] + predictor) & 255
                else:
                    raise AssertionError(f"unknown PNG filter {kind} in row {y}")
            out = bytes(cur)
        rows.append(out)
        prev = out
    return rows


def test_admin_page_screenshot_is_painted(built_admin_proxy: ProxyServer, tmp_path: Path) -> None:
    admin_proxy = built_admin_proxy
    shot = tmp_path / "admin.png"
    chromium(
        f"{admin_proxy.url}/admin/",
        tmp_path / "shot",
        f"--screenshot={shot}",
        f"--window-size={WIDTH},{HEIGHT}",
    )
    png = decode_png(shot.read_bytes())
    assert (png.width, png.height) == (WIDTH, HEIGHT)
    # Not a blank page: many different rows, and many colours in a grid of samples.
    distinct_rows = len(set(png.rows))
    assert distinct_rows > 100, f"only {distinct_rows} different rows of pixels: a blank page?"
    samples = [png.pixel(x, y) for y in range(0, HEIGHT, 8) for x in range(0, WIDTH, 8)]
    colours = len(set(samples))
    assert colours > 30, f"only {colours} colours in {len(samples)} samples"
    # The style sheet applied: a dark header over a light page.
    header, page_background = png.pixel(8, 8), png.pixel(WIDTH // 2, HEIGHT - 8)
    assert sum(header) < 200, header
    assert sum(page_background) > 600, page_background
    # The failed build is shown in red (its badge and error text).
    red = sum(1 for y in range(0, HEIGHT, 2) for x in range(0, WIDTH, 2) if is_red(png.pixel(x, y)))
    assert red > 20, f"{red} red pixels"
    # A green "done" badge is there too.
    green = sum(1 for y in range(0, HEIGHT, 2) for x in range(0, WIDTH, 2) if is_green(png.pixel(x, y)))
    assert green > 20, f"{green} green pixels"


def is_red(pixel: tuple[int, int, int]) -> bool:
    r, g, b = pixel
    return r > 150 and g < 90 and b < 90


def is_green(pixel: tuple[int, int, int]) -> bool:
    r, g, b = pixel
    return g > 90 and r < 60 and b < 90


def test_admin_page_fits_a_phone(built_admin_proxy: ProxyServer, tmp_path: Path) -> None:
    """At 390 x 844 CSS pixels (a phone) nothing is wider than the screen, and each build is a card whose
    values are labelled with their column's name."""
    with Browser(tmp_path / "phone") as browser:
        browser.open(f"{built_admin_proxy.url}/admin/", 390, 844)
        browser.wait_for("document.getElementById('status')?.textContent.startsWith('updated')")
        browser.wait_for("document.querySelectorAll('#finished tr[data-state]').length === 2")
        page_width = browser.evaluate("document.documentElement.scrollWidth")
        widest = browser.evaluate(
            "Math.max(...[...document.querySelectorAll('body *')].map(e => e.getBoundingClientRect().right))"
        )
        labels = browser.evaluate(
            "[...document.querySelectorAll('#finished tr[data-state=failed] td')].map(td => td.dataset.label)"
        )
        header_shown = browser.evaluate("getComputedStyle(document.querySelector('#finished thead')).display")
    assert page_width <= 390, f"the page is {page_width} px wide on a 390 px screen"
    assert widest <= 390.5, f"an element reaches {widest} px"
    assert labels[:5] == ["Project", "Version", "Target", "State", "Duration"]
    assert header_shown == "none"  # the column names are on the cards instead
