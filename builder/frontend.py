"""The PEP 517 front end that runs INSIDE the sandbox, with the build environment's own interpreter.

Kept free of wheelfarm imports: the sandbox sees only this file and the pyproject_hooks package (bound
read-only), and the interpreter may be any CPython from 3.8 on. pyproject_hooks runs the backend in a
subprocess of the same interpreter, exactly as pip and build do. The answer goes to the descriptor
``$WHEELFARM_RESULT_FD`` (never a file in the tree, which the backend could replace with a link).

    python frontend.py auto|wheel REQUEST.json

``auto`` asks get_requires_for_build_wheel and, when the backend asks for nothing, goes on to build_wheel
in the same sandbox; each answer is one JSON line, so the host knows which hook had answered.
"""

import json
import os
import sys


def main() -> int:
    hook, request_path = sys.argv[1:3]
    with open(request_path, encoding="utf-8") as handle:
        request = json.load(handle)
    result_fd = int(os.environ.pop("WHEELFARM_RESULT_FD"))
    os.set_inheritable(result_fd, False)  # the backend's processes get no way to answer for us
    sys.path.insert(0, request["hooks_path"])
    from pyproject_hooks import BuildBackendHookCaller

    caller = BuildBackendHookCaller(
        request["source_dir"],
        request["backend"],
        backend_path=request.get("backend_path"),
        python_executable=sys.executable,
    )
    with os.fdopen(result_fd, "w", encoding="utf-8") as answer:
        if hook == "auto":
            requires = list(caller.get_requires_for_build_wheel({}))
            answer.write(json.dumps({"requires": requires}, default=str) + "\n")
            answer.flush()
            if requires:
                return 0  # the host installs them, then asks for the wheel
        elif hook != "wheel":
            raise SystemExit("unknown hook " + hook)
        answer.write(json.dumps({"wheel": caller.build_wheel(request["output_dir"], {})}, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
