"""The last step on the host before bubblewrap: ``python -I -S launch.py SPEC_JSON`` (standard library only).

It runs as a process of its own (the worker has threads; none of this is safe in a ``preexec_fn``) and
ends by exec'ing bubblewrap with an empty environment, so no secret of ours is in any process a build can
see, the sandbox's PID 1 included. In order:

1. join the build's pids and memory cgroups (root only: they are root's), and set the resource limits;
2. when a build user is given (the proxy runs as root): enter a private mount namespace, mount a small
   tmpfs over /tmp there and bind every host folder the sandbox needs into it, because the build user may
   not be able to reach them where they are (pyenv under /root, the cache under ~/.cache); the host sees
   none of these mounts;
3. drop to the build user (no supplementary groups) when given;
4. ask the kernel to kill us when the worker dies (PR_SET_PDEATHSIG), and check it is still alive;
5. exec bubblewrap, which makes the sandbox with the build user's own user namespace.

SPEC_JSON: {"argv": [...], "sources": [host paths], "stage": "/tmp/...", "uid": int|null, "gid": int|null,
"cgroups": [paths], "rlimits": {"RLIMIT_AS": n, ...}, "parent": pid}. With a build user, ``argv`` names
source N as ``<stage>/N``.
"""

import ctypes
import json
import os
import resource
import signal
import sys

CLONE_NEWNS = 0x00020000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_NOSUID = 0x2
MS_NODEV = 0x4
PR_SET_PDEATHSIG = 1


def main() -> int:
    spec = json.loads(sys.argv[1])
    libc = ctypes.CDLL(None, use_errno=True)
    for group in spec.get("cgroups", []):
        with open(os.path.join(group, "cgroup.procs"), "w") as procs:
            procs.write(str(os.getpid()))
    for name, value in spec.get("rlimits", {}).items():
        resource.setrlimit(getattr(resource, name), (value, value))
    uid, gid = spec.get("uid"), spec.get("gid")
    argv = list(spec["argv"])
    if uid is not None:
        # bubblewrap itself is staged too: the tmpfs may cover where it lives (a configured path in /tmp).
        _stage_sources(libc, [*spec["sources"], argv[0]], spec["stage"])
        argv[0] = os.path.join(spec["stage"], str(len(spec["sources"])))
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    # After the uid change: changing credentials clears the parent-death signal (prctl(2)).
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != spec["parent"]:
        return 70  # the worker is already gone
    os.execve(argv[0], argv, {})
    return 71


def _stage_sources(libc: ctypes.CDLL, sources: list[str], stage: str) -> None:
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "making / private")
    # Opened in the new namespace (a bind from another namespace's mount is EINVAL), before the tmpfs
    # covers /tmp (a source under /tmp stays reachable through its descriptor).
    handles = []
    for source in sources:
        flags = os.O_PATH | os.O_CLOEXEC | (os.O_DIRECTORY if os.path.isdir(source) else 0)
        handles.append(os.open(source, flags))
    top = os.path.dirname(stage)
    _check(
        libc.mount(b"tmpfs", top.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755,size=1m"),
        "mounting the staging tmpfs",
    )
    os.mkdir(stage, 0o755)
    for number, handle in enumerate(handles):
        target = os.path.join(stage, str(number))
        if os.path.isdir(f"/proc/self/fd/{handle}"):
            os.mkdir(target, 0o755)
        else:
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
        by_handle = f"/proc/self/fd/{handle}".encode()
        _check(
            libc.mount(by_handle, target.encode(), None, MS_BIND | MS_REC, None), f"binding {sources[number]}"
        )
        os.close(handle)


def _check(result: int, what: str) -> None:
    if result != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"wheelfarm launch: {what}: {os.strerror(number)}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except OSError as exc:
        print(f"wheelfarm launch: {exc}", file=sys.stderr)
        sys.exit(72)
