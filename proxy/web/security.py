"""What a browser or a terminal may do with what the proxy sends: response headers that stop sniffing,
framing and leaking, and error text that cannot carry markup or terminal control sequences.

Error bodies are text/plain and quote values from clients (paths, project names) and from upstream (file
names, URLs): a hostile upstream chooses the URL it lists. ``plain_text`` makes such a message safe to show:
credentials redacted, control characters (ANSI escapes for the terminal of whoever runs curl or
``wheelfarm admin``) and bidirectional overrides (text that reads differently than it is, CVE-2021-42574)
written as escapes. With ``X-Content-Type-Options: nosniff`` (Fetch standard) no browser renders it as HTML.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from aiohttp import web

from proxy.redact import redact

# C0 controls but tab and newline, DEL, C1 controls; line/paragraph separators; bidi marks and overrides.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
MAX_MESSAGE = 4000

# A body that is not a page: nothing in it may run, load, or be framed (CSP level 3, frame-ancestors
# replaces X-Frame-Options, which is still sent for older browsers).
NO_CONTENT_POLICY = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
ERROR_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": NO_CONTENT_POLICY}
_ADMIN_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # RFC 7034
    "Referrer-Policy": "no-referrer",  # admin URLs name projects and builds: never sent elsewhere
    "Cross-Origin-Resource-Policy": "same-origin",
}


def plain_text(message: str) -> str:
    """``message`` as safe text/plain: credentials redacted, unsafe characters escaped, length bounded."""
    text = _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", redact(message))
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "..."


def error_response(status: int, message: str, *, reason: str | None = None) -> web.Response:
    """A plain-text error answer: the message made safe, and headers that keep browsers from acting on it."""
    return web.Response(status=status, reason=reason, text=plain_text(message) + "\n", headers=ERROR_HEADERS)


def page_policy(page: Path) -> str:
    """The admin page's Content-Security-Policy: its inline <style> and <script> allowed by their hashes
    (CSP level 2, "hash-source"), nothing else loaded, JSON fetched from this origin only."""
    html = page.read_text(encoding="utf-8")
    scripts = _hashes(re.findall(r"<script>(.*?)</script>", html, re.DOTALL))
    styles = _hashes(re.findall(r"<style>(.*?)</style>", html, re.DOTALL))
    return (
        f"default-src 'none'; script-src {scripts}; style-src {styles}; connect-src 'self'; "
        "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def _hashes(blocks: list[str]) -> str:
    found = [base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in blocks]
    return " ".join(f"'sha256-{digest}'" for digest in found) or "'none'"


def secure_admin(admin: web.Application, page: Path) -> None:
    """Security headers on every response the admin app sends: its page, its JSON and its errors, whichever
    middleware made them (on_response_prepare runs for all of them, just before the headers go out)."""
    policy = page_policy(page)

    async def add_headers(_: web.Request, response: web.StreamResponse) -> None:
        html = response.headers.get("Content-Type", "").startswith("text/html")
        response.headers["Content-Security-Policy"] = policy if html else NO_CONTENT_POLICY
        response.headers.update(_ADMIN_HEADERS)

    admin.on_response_prepare.append(add_headers)
