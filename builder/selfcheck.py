"""The start-up self-check: a tiny sdist built through the real pipeline before any build is offered.

Its backend (its own backend.py, no requirements, so no index is needed) first checks what the sandbox
promises, from inside: no network route, no secret in PID 1's environment (which is our own frontend,
not bubblewrap), seccomp on, no new privileges, no capabilities; then it writes a one-module wheel that the
import check imports. If anything fails, builds stay off and the reason is shown in the log, /healthz and
the admin summary, instead of every build failing with a 422 that blames the package.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

NAME = "wheelfarm-selfcheck"
VERSION = "1.0"
FILENAME = f"{NAME}-{VERSION}.tar.gz"

_BACKEND = """\
import base64, hashlib, os, zipfile

def _status(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return line.split(":", 1)[1].strip()
    return ""

def _check_sandbox():
    problems = []
    with open("/proc/net/route") as routes:
        if len(routes.read().splitlines()) > 1:
            problems.append("the sandbox has a network route")
    with open("/proc/1/environ", "rb") as environ:
        if b"WHEELFARM_ADMIN" in environ.read():
            problems.append("PID 1 of the sandbox holds the proxy's environment")
    if _status("Seccomp") != "2":
        problems.append("no seccomp filter is loaded")
    if _status("NoNewPrivs") != "1":
        problems.append("no_new_privs is not set")
    if int(_status("CapEff") or "0", 16) != 0:
        problems.append("the build has capabilities")
    if problems:
        raise RuntimeError("sandbox self-check: " + "; ".join(problems))

def get_requires_for_build_wheel(config_settings=None):
    _check_sandbox()
    return []

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _check_sandbox()
    name, version = "wheelfarm_selfcheck", "1.0"
    info = name + "-" + version + ".dist-info"
    files = {
        name + ".py": b"CHECKED = True\\n",
        info + "/METADATA": b"Metadata-Version: 2.1\\nName: wheelfarm-selfcheck\\nVersion: 1.0\\n",
        info + "/WHEEL": (
            b"Wheel-Version: 1.0\\nGenerator: wheelfarm\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
        ),
    }
    filename = name + "-" + version + "-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(path + ",sha256=" + digest + "," + str(len(data)))
        record.append(info + "/RECORD,,")
        wheel.writestr(info + "/RECORD", "\\n".join(record) + "\\n")
    return filename
"""

_FILES = {
    "PKG-INFO": f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\n",
    "pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
    "backend.py": _BACKEND,
}


def write_sdist(folder: Path) -> Path:
    """The self-check's sdist in ``folder`` (the same bytes every time)."""
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for member, text in sorted(_FILES.items()):
            data = text.encode()
            info = tarfile.TarInfo(f"{NAME}-{VERSION}/{member}")
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))
    path = folder / FILENAME
    path.write_bytes(buffer.getvalue())
    return path
