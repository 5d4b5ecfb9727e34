"""Credentials in URLs are never shown: not in logs, the admin API and page, metrics, error bodies or
provenance records. ``https://user:secret@mirror.example/simple/`` is shown as
``https://***@mirror.example/simple/`` (RFC 3986 section 3.2.1: userinfo is everything before the "@")."""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@?#]+@")


# libpq's other spellings of a password: "password=..." in a key=value connection string, "?password=" in a
# URL's query (PostgreSQL 34.1.1), and libpq's error messages that quote the part they could not read.
_PASSWORD = re.compile(r"(?i)(\bpassword\s*=\s*)('[^']*'|[^\s&'\"]+)")
_QUOTED_TOKEN = re.compile(r'(invalid [^"]*token: )"[^"]*"')


def redact(text: str) -> str:
    if "@" in text:
        text = _USERINFO.sub(r"\g<scheme>***@", text)
    if "assword" in text or "token" in text:
        text = _PASSWORD.sub(r"\g<1>***", text)
        text = _QUOTED_TOKEN.sub(r'\g<1>"***"', text)
    return text


def redact_log_values(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: every string value of a log line redacted (a safety net; callers redact too)."""
    for key, value in event.items():
        if isinstance(value, str) and ("@" in value or "assword" in value or "token" in value):
            event[key] = redact(value)
    return event
