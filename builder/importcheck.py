"""Does the built wheel import? Runs INSIDE the sandbox with the target's own interpreter (CPython 3.8 on,
standard library only):

    python -I importcheck.py WHEEL UV CHECK_JSON

It installs the wheel alone (no dependencies, no network) into a fresh environment under the sandbox's
private /tmp, loads every extension module the wheel carries with dlopen(RTLD_NOW) (an ABI mismatch, e.g.
a C API symbol the target's Python removed, fails here), then imports each top-level module from an empty
folder. A failure that only a missing dependency explains (an ImportError naming a module the wheel does not
carry, or any error of a wheel that declares dependencies, which are not installed here) is inconclusive,
not a failure; a SyntaxError, or a module of the wheel itself that cannot load, is a failure.

CHECK_JSON: {"modules": [top-level names], "own": [every top-level name the wheel installs],
"extensions": [paths relative to site-packages], "has_dependencies": bool}. The answer, on the descriptor
``$WHEELFARM_RESULT_FD``: {"imported": [...], "inconclusive": {name: why}, "failed": {name: why}}, or
{"crashed": why} when importing killed the interpreter, or {"error": why} when the check could not run.
"""

import json
import os
import subprocess
import sys

VENV = "/tmp/wheelfarm-import-check"

_CHECKER = r"""
import ctypes, importlib, json, os, sys, sysconfig, traceback
spec = json.loads(sys.argv[1])
site = sysconfig.get_paths()["platlib"]
own = set(spec["own"])
report = {"imported": [], "inconclusive": {}, "failed": {}}

def tail(exc):
    lines = traceback.format_exception_only(type(exc), exc)
    return "".join(lines).strip()[-600:]

for path in spec["extensions"]:
    try:
        ctypes.CDLL(os.path.join(site, path), mode=os.RTLD_NOW | os.RTLD_LOCAL)
    except OSError as exc:
        report["failed"][path] = "cannot load the extension module: " + str(exc)[-600:]
for name in spec["modules"]:
    try:
        importlib.import_module(name)
        report["imported"].append(name)
    except SyntaxError as exc:
        report["failed"][name] = tail(exc)
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing and missing not in own:
            report["inconclusive"][name] = "needs " + missing + ", not installed here"
        elif not missing and spec["has_dependencies"]:
            report["inconclusive"][name] = "dependencies not installed here: " + tail(exc)
        else:
            report["failed"][name] = tail(exc)
    except BaseException as exc:
        if spec["has_dependencies"]:
            report["inconclusive"][name] = "dependencies not installed here: " + tail(exc)
        else:
            report["failed"][name] = tail(exc)
with open(sys.argv[2], "w") as out:
    json.dump(report, out)
"""


def main() -> int:
    wheel, uv, raw = sys.argv[1:4]
    result_fd = int(os.environ.pop("WHEELFARM_RESULT_FD"))
    os.set_inheritable(result_fd, False)
    spec = json.loads(raw)
    uv_env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/tmp",
        "UV_CACHE_DIR": "/tmp/wheelfarm-uv-cache",
        "UV_NO_CONFIG": "1",
        "UV_OFFLINE": "1",
        "UV_PYTHON_DOWNLOADS": "never",
    }
    answer = {}
    try:
        subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, VENV], env=uv_env, check=True)
        install = [uv, "pip", "install", "--quiet", "--python", VENV + "/bin/python", "--no-deps"]
        install += ["--no-index", "--link-mode", "copy", wheel]
        subprocess.run(install, env=uv_env, check=True)
        os.makedirs("/tmp/wheelfarm-empty", exist_ok=True)
        report_path = "/tmp/wheelfarm-import-report.json"
        checker = [VENV + "/bin/python", "-I", "-c", _CHECKER, json.dumps(spec), report_path]
    except (OSError, subprocess.CalledProcessError) as exc:
        answer = {"error": "the import check could not install the wheel: " + str(exc)}
    else:
        checked = subprocess.run(
            checker, cwd="/tmp/wheelfarm-empty", env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
        )
        try:
            with open(report_path, encoding="utf-8") as handle:
                answer = json.load(handle)
        except (OSError, ValueError):
            answer = {"crashed": f"importing the wheel ended the interpreter (status {checked.returncode})"}
    with os.fdopen(result_fd, "w", encoding="utf-8") as out:
        json.dump(answer, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
