"""A builder worker process: ``python -m builder.worker PARENT_PID``, request JSON in, result JSON out.

The pool starts one per build, with an empty environment (no secret of the proxy's reaches it, nor any
process it starts), so a build that crashes, leaks or hangs takes only its own process with it. It dies
with the pool (PR_SET_PDEATHSIG), holds its work folder's lock while it runs (a folder whose lock is free
at start-up is a leftover, builder/workdir.py), and answers on the stdout it was given while anything else
it or its children print goes to stderr.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import sys
import traceback
from pathlib import Path

from builder.jobs import Phase
from builder.protocol import WorkerOrder, WorkerReport
from builder.runner import run_build
from builder.workdir import BuildFolder, write_owner

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    parent = int(argv[0])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        return 70  # the pool died before we could ask to die with it
    answer = os.dup(1)
    os.dup2(2, 1)  # stray prints (ours, a library's) must not corrupt the answer
    try:
        request = WorkerOrder.from_json(sys.stdin.buffer.read())
    except (ValueError, TypeError, KeyError) as exc:
        result = WorkerReport.failure(Phase.INTERNAL, f"the worker got a bad request: {exc}")
    else:
        folder = BuildFolder(Path(request.work_dir))
        lock = os.open(folder.lock, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)
        write_owner(folder)
        try:
            result = run_build(request)
        except BaseException as exc:  # run_build catches everything; this is the last wall
            traceback.print_exc()
            result = WorkerReport.failure(Phase.INTERNAL, f"builder error: {exc!r}")
    with os.fdopen(answer, "wb") as out:
        out.write(result.to_json())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
