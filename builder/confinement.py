"""Why bubblewrap cannot make a sandbox here, told from what confines the proxy's own process.

bubblewrap names the refused system call, not who refused it: inside a container with Docker's defaults it
blames the kernel ("does not allow non-privileged user namespaces") when Docker's seccomp profile refused
the namespace, and says only "Can't mount proc" when Docker's masked /proc paths are what the kernel
objects to. When the start-up self-check fails in the sandbox, these hints are added to the reason shown
in the log, /healthz and the admin page, each with the `docker run` option that lifts it (README.md,
"Docker"; measured with Docker 20.10: tests/test_docker_image.py).
"""

from __future__ import annotations

from pathlib import Path

SECCOMP_HINT = (
    "the proxy itself runs under a seccomp filter, which may refuse system calls bubblewrap needs "
    "(Docker's default profile does: docker run --security-opt seccomp=unconfined)"
)
APPARMOR_HINT = (
    "the proxy itself runs under the AppArmor profile {profile}, which may refuse mounts "
    "(Docker's docker-default does: docker run --security-opt apparmor=unconfined)"
)
PROC_HINT = (
    "parts of /proc are covered by other mounts ({paths}), so the kernel refuses a fresh /proc to a user "
    "namespace (Docker masks them: docker run --security-opt systempaths=unconfined)"
)
# Mount points under /proc the kernel does not count against a fresh /proc (permanently empty folders).
_HARMLESS = ("/proc/sys/fs/binfmt_misc",)


def explain(
    status: Path = Path("/proc/self/status"),
    mountinfo: Path = Path("/proc/self/mountinfo"),
    apparmor: Path = Path("/proc/self/attr/current"),
) -> str:
    """Hints, "; "-separated, or "" when nothing here explains a failing sandbox."""
    hints = []
    if _field(_read(status), "Seccomp") == "2":  # 2: filter mode (proc(5))
        hints.append(SECCOMP_HINT)
    profile = _read(apparmor).strip("\0\n ")  # "unconfined", or "docker-default (enforce)"
    if profile and profile != "unconfined" and profile.endswith("(enforce)"):
        hints.append(APPARMOR_HINT.format(profile=profile.removesuffix(" (enforce)")))
    covered = covered_proc_paths(_read(mountinfo))
    if covered:
        shown = ", ".join(covered[:3]) + (", ..." if len(covered) > 3 else "")
        hints.append(PROC_HINT.format(paths=shown))
    return "; ".join(hints)


def covered_proc_paths(mountinfo: str) -> list[str]:
    """Mount points below /proc, from the text of /proc/self/mountinfo (proc(5): the 5th field)."""
    found = set()
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = fields[4].replace("\\040", " ")
        if point.startswith("/proc/") and not point.startswith(_HARMLESS):
            found.add(point)
    return sorted(found)


def _field(text: str, name: str) -> str:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    return ""


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
