"""Which hosts the proxy fetches from: the upstream it was configured with, and the file hosts its pages
may point at; never an address on the proxy's own networks unless the operator says so.

Pages are the upstream's words, and the upstream may be hostile or compromised: a file URL pointing at
``http://127.0.0.1:8081/admin/``, ``http://169.254.169.254/`` (a cloud's metadata service) or a
``10.x`` host would make the proxy fetch it and hand the answer to any client (server-side request forgery).
So every file URL and every redirect must name the upstream's own host or one of ``[upstream] file_hosts``,
by http or https; and a file host's name must not resolve to a loopback, link-local, private (RFC 1918, RFC
4193), shared (RFC 6598), unspecified or multicast address, checked when connecting (``GuardedResolver``),
so a name that resolves there later (DNS rebinding) is refused too. The configured upstream itself may be
anywhere: the operator chose it.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from proxy.errors import UpstreamError

# Networks a file host must not resolve to (the documentation ranges, which some test networks use, are
# not among them).
_FORBIDDEN_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",  # "this network" (RFC 1122)
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # private (RFC 1918)
        "100.64.0.0/10",  # shared address space (RFC 6598)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local (RFC 3927): cloud metadata services live here
        "224.0.0.0/4", "240.0.0.0/4",  # multicast, reserved
        "::/128", "::1/128",  # unspecified, loopback
        "fc00::/7",  # unique local (RFC 4193)
        "fe80::/10",  # link-local
        "ff00::/8",  # multicast
    )
)  # fmt: skip


class ForbiddenUpstreamUrl(UpstreamError):
    """A URL the proxy will not fetch; the message says why (never with credentials in it)."""


def forbidden_address(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in _FORBIDDEN_NETWORKS)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int]:
    """RFC 6454 origin: scheme, host and port (the scheme's default when none is given)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    return parts.scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(parts.scheme, 0)


@dataclass(frozen=True, slots=True)
class HostPolicy:
    upstream: tuple[str, str, int]  # the configured upstream's origin: the one place anywhere is allowed
    # Hosts files may also come from: names or "*.example.org" (on their scheme's default port), "host:port".
    file_hosts: tuple[str, ...]
    allow_private: bool = False  # the operator's choice: file hosts on private networks are fine

    @classmethod
    def for_upstream(cls, upstream_url: str, file_hosts: Sequence[str], allow_private: bool) -> HostPolicy:
        hosts = tuple(host.lower().strip() for host in file_hosts if host.strip())
        return cls(_origin(upstream_url), hosts, allow_private)

    @property
    def upstream_host(self) -> str:
        return self.upstream[1]

    def check(self, url: str, what: str) -> None:
        """Refuse ``url`` unless the proxy may fetch it (ForbiddenUpstreamUrl, naming the host)."""
        scheme, host, port = _origin(url)
        if scheme not in ("http", "https") or not host:
            raise ForbiddenUpstreamUrl(f"upstream listed {what} at a {scheme or 'relative'}: URL; refused")
        if (scheme, host, port) == self.upstream:
            return
        if not self._listed(host, port, scheme):
            raise ForbiddenUpstreamUrl(
                f"upstream listed {what} on {host}:{port}, which is not the upstream's own origin nor one of "
                "[upstream] file_hosts; refused"
            )
        if forbidden_address(host) and not self.allow_private:
            raise ForbiddenUpstreamUrl(
                f"upstream listed {what} at {host}, a loopback, link-local or private address; refused "
                "([upstream] allow_private_networks)"
            )

    def _listed(self, host: str, port: int, scheme: str) -> bool:
        for allowed in self.file_hosts:
            name, _, allowed_port = allowed.partition(":")
            wanted = int(allowed_port) if allowed_port.isdigit() else _DEFAULT_PORTS[scheme]
            if port == wanted and ((name.startswith("*.") and host.endswith(name[1:])) or host == name):
                return True
        return False

    def resolves_freely(self, host: str) -> bool:
        """May ``host`` resolve to any address? The configured upstream may; file hosts only when the
        operator allows private networks."""
        return self.allow_private or host.lower() == self.upstream_host


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, minus the forbidden addresses for hosts that may not use them: checked when the
    connection is made, so what a name resolves to later (DNS rebinding) counts, not what it did once."""

    def __init__(self, policy: HostPolicy, resolver: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._resolver = resolver or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._resolver.resolve(host, port, family)
        if self._policy.resolves_freely(host):
            return found
        kept = [result for result in found if not forbidden_address(str(result["host"]))]
        if not kept:
            raise OSError(
                errno.EHOSTUNREACH,
                f"{host} resolves only to loopback, link-local or private addresses; refused",
            )
        return kept

    async def close(self) -> None:
        await self._resolver.close()
