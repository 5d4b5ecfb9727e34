"""Domain exceptions. Each knows its HTTP status; one middleware in app.py turns them into responses."""

from __future__ import annotations


class WheelfarmError(Exception):
    """Base: ``status`` is the HTTP status a client gets, the message is the body it reads."""

    status = 500
    reason: str | None = None  # an HTTP reason phrase to send instead of the standard one

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(WheelfarmError):
    status = 400


class NotFound(WheelfarmError):
    status = 404


class NotAcceptable(WheelfarmError):
    status = 406


class UpstreamError(WheelfarmError):
    """Upstream answered something we cannot use (5xx, garbage, a file that fails its hash check)."""

    status = 502


class UpstreamTimeout(UpstreamError):
    status = 504


class UpstreamNotFound(NotFound):
    """Upstream said 404 for something it once listed."""


class InsufficientStorage(WheelfarmError):
    """The cache disk has no room for a file (RFC 4918 section 11.5: the server cannot store what the request
    needs). Not 503: no retry a client makes on its own frees the disk, so it should fail at once."""

    status = 507
