"""The admin API's HTTP client for the command line: the standard library's urllib, nothing more."""

from __future__ import annotations

import dataclasses
import enum
import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import urljoin

DEFAULT_URL = "http://127.0.0.1:8080/admin/"
URL_ENV = "WHEELFARM_ADMIN_URL"
TOKEN_ENV = "WHEELFARM_ADMIN_TOKEN"
TIMEOUT = 30.0
BUILD_AHEAD_TIMEOUT = 600.0  # the proxy reads each requirement's page (maybe from upstream) before it answers
TAIL_BYTES = 64 * 1024  # read from the end of a build log for the lines that look like errors


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1
    ERROR = 2


class AdminError(Exception):
    """A usage, HTTP or connection error: printed as is, exit code 2."""


@dataclasses.dataclass(frozen=True, slots=True)
class AdminClient:
    base_url: str  # ends with "/"
    token: str = ""

    def url(self, path: str) -> str:
        return urljoin(self.base_url, path)

    def get(self, path: str) -> Any:
        return self._send("GET", path)

    def post(self, path: str, body: Mapping[str, Any], timeout: float = TIMEOUT) -> Any:
        return self._send("POST", path, body, timeout)

    def delete(self, path: str) -> Any:
        return self._send("DELETE", path)

    def _send(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, timeout: float = TIMEOUT
    ) -> Any:
        url = self.url(path)
        headers = {"Accept": "application/json", "User-Agent": "wheelfarm-admin-cli"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with self._open(request, timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise AdminError(self._http_error(method, url, exc)) from None
        except urllib.error.URLError as exc:
            raise AdminError(self._unreachable(exc.reason)) from None
        except (OSError, http.client.HTTPException) as exc:
            raise AdminError(self._unreachable(exc)) from None
        try:
            return json.loads(raw)
        except ValueError:
            raise AdminError(f"{url} did not answer JSON: is {self.base_url} the admin base URL?") from None

    def tail(self, path: str) -> list[str]:
        """The end of a text file on the proxy (a build log), in lines; none when it cannot be read."""
        request = urllib.request.Request(self.url(path), headers={"Range": f"bytes=-{TAIL_BYTES}"})
        try:
            with self._open(request, TIMEOUT) as response:
                text = bytes(response.read(TAIL_BYTES)).decode("utf-8", "replace")
                cut = not response.headers.get("Content-Range", "bytes 0-").startswith("bytes 0-")
        except (OSError, http.client.HTTPException):
            return []
        return [line for line in text.splitlines()[1 if cut else 0 :] if line.strip()]

    @staticmethod
    def _open(request: urllib.request.Request, timeout: float) -> http.client.HTTPResponse:
        # HTTP_PROXY and friends are ignored: the bearer token goes to wheelfarm, not via a forward proxy.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        response: http.client.HTTPResponse = opener.open(request, timeout=timeout)
        return response

    def _unreachable(self, reason: object) -> str:
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused (is `wheelfarm serve` running there, with [admin] enabled?)"
        else:
            why = str(getattr(reason, "strerror", None) or reason)
        return f"cannot reach the admin API at {self.base_url}: {why}"

    def _http_error(self, method: str, url: str, exc: urllib.error.HTTPError) -> str:
        body = exc.read().decode("utf-8", "replace").strip()
        try:
            decoded = json.loads(body)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict):
            body = str(decoded.get("error") or decoded.get("message") or body)
        message = f"{method} {url}: HTTP {exc.code} {exc.reason}: {body[:2000]}"
        if exc.code == 401:
            hint = "was refused (wrong token?)" if self.token else f"is missing (--token or {TOKEN_ENV})"
            message += f"\nthe admin token {hint}"
        elif exc.code == 404 and body == "404: Not Found":
            message += (
                f"\nno such admin API here: is {self.base_url} right, and [admin] enabled on the proxy?"
            )
        return message
