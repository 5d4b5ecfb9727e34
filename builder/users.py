"""Which host user runs a build's sandbox: never root.

As host root, build slot N runs as uid and gid ``build_uid + N`` (the launcher drops to it before it
starts bubblewrap). As any other user, including the root of a rootless container's user namespace (an
unprivileged user of the host already), builds run as that user inside a user namespace of their own.
"""

from __future__ import annotations

import os
from pathlib import Path


def _uid_map() -> list[tuple[int, int, int]]:
    try:
        lines = Path("/proc/self/uid_map").read_text().splitlines()
    except OSError:
        return [(0, 0, 4294967295)]
    return [(int(a), int(b), int(c)) for a, b, c in (line.split() for line in lines if line.strip())]


def mapped(uid: int) -> bool:
    return any(inside <= uid < inside + count for inside, _, count in _uid_map())


def host_root() -> bool:
    """We are uid 0 and that is root outside too (not the root of a rootless container's user namespace,
    which is an unprivileged user of the host already: builds then run as it, in a user namespace)."""
    if os.geteuid() != 0:
        return False
    return any(inside == 0 and outside == 0 for inside, outside, _ in _uid_map())


def build_user(build_uid: int, slot: int) -> tuple[int, int] | None:
    """(uid, gid) for the sandbox of build slot ``slot``; None: the sandbox runs as we do."""
    if not host_root():
        return None
    return (build_uid + slot, build_uid + slot)
