"""A builder worker process: ``python -m builder.worker REQUEST.json RESULT.json``.

The pool starts one per build, so a build that crashes, leaks or hangs takes only its own process with it.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from builder.jobs import BuildRequest, BuildResult
from builder.runner import run_build


def main(argv: list[str]) -> int:
    request_path, result_path = Path(argv[0]), Path(argv[1])
    request = BuildRequest.from_json(request_path.read_bytes())
    try:
        result = run_build(request)
    except Exception as exc:  # a bug of ours: the build still ends with a result naming it
        traceback.print_exc()
        result = BuildResult.failure(Path(request.work_root), "internal", f"builder error: {exc!r}")
    partial = result_path.with_suffix(".partial")
    partial.write_bytes(result.to_json())
    partial.replace(result_path)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
