"""Network namespaces as separate hosts: each with a veth pair to this one, a /30 of its own.

The host side gets ``10.N.M.1``, the namespace ``10.N.M.2``; a process run with ``host.wrap`` sees only its
own loopback and that link, so it reaches the farm at ``host.gateway`` and nothing else. Creating them needs
root (CAP_NET_ADMIN and CAP_SYS_ADMIN): ``available()`` says whether this machine allows it, and tests fall
back to loopback where it does not.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

_counter = itertools.count(1)


@dataclass(frozen=True)
class Namespace:
    name: str
    gateway: str  # this host, as the namespace reaches it
    address: str  # the namespace's own address

    def wrap(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def available() -> bool:
    if os.geteuid() != 0:
        return False
    probe = f"wfprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except (OSError, subprocess.CalledProcessError):
        return False
    _ip("netns", "del", probe)
    return True


@contextlib.contextmanager
def namespace() -> Iterator[Namespace]:
    """A namespace linked to this host, removed (with its veth pair) when the block ends."""
    serial = next(_counter)
    pid = os.getpid()
    name = f"wf{pid}n{serial}"
    outer, inner = f"wfh{pid % 100000}{serial}", f"wfn{pid % 100000}{serial}"
    subnet = f"10.{100 + pid % 100}.{(pid // 100) % 64 * 4 + serial % 4}"
    gateway, address = f"{subnet}.1", f"{subnet}.2"
    _ip("netns", "add", name)
    try:
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", name)
        _ip("addr", "add", f"{gateway}/30", "dev", outer)
        _ip("link", "set", outer, "up")
        _ip("netns", "exec", name, "ip", "addr", "add", f"{address}/30", "dev", inner)
        _ip("netns", "exec", name, "ip", "link", "set", inner, "up")
        _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield Namespace(name, gateway, address)
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", outer)
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("netns", "del", name)
