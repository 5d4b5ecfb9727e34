"""The PEP 517 front end that runs INSIDE the sandbox, with the build environment's own interpreter.

Kept free of wheelfarm imports: the sandbox sees only this file and the pyproject_hooks package (bound
read-only), and the interpreter may be any CPython from 3.8 on. pyproject_hooks runs the backend in a
subprocess of the same interpreter, exactly as pip and build do.

    python frontend.py requires|wheel REQUEST.json RESULT.json
"""

import json
import sys


def main() -> int:
    hook, request_path, result_path = sys.argv[1:4]
    with open(request_path, encoding="utf-8") as handle:
        request = json.load(handle)
    sys.path.insert(0, request["hooks_path"])
    from pyproject_hooks import BuildBackendHookCaller, quiet_subprocess_runner  # noqa: F401

    caller = BuildBackendHookCaller(
        request["source_dir"],
        request["backend"],
        backend_path=request.get("backend_path"),
        python_executable=sys.executable,
    )
    result: dict[str, object]
    if hook == "requires":
        result = {"requires": list(caller.get_requires_for_build_wheel({}))}
    elif hook == "wheel":
        result = {"wheel": caller.build_wheel(request["output_dir"], {})}
    else:
        raise SystemExit("unknown hook " + hook)
    with open(result_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
