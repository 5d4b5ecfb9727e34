"""Credentials in URLs are never shown: not in logs, the admin API and page, metrics, error bodies or
provenance records. ``https://user:secret@mirror.example/simple/`` is shown as
``https://***@mirror.example/simple/`` (RFC 3986 section 3.2.1: userinfo is everything before the "@")."""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@?#]+@")


def redact(text: str) -> str:
    return _USERINFO.sub(r"\g<scheme>***@", text) if "@" in text else text


def redact_log_values(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: every string value of a log line redacted (a safety net; callers redact too)."""
    for key, value in event.items():
        if isinstance(value, str) and "@" in value:
            event[key] = redact(value)
    return event
