"""Build requirements: checked, resolved and downloaded on the host without running anything of the build.

The sdist names its build requirements (``[build-system] requires``, then whatever its backend's
``get_requires_for_build_wheel`` answers in the sandbox). Each must be a plain PEP 508 requirement: a name,
extras, a version specifier and a marker, never a URL or a path (the farm installs build requirements
from its index only). uv resolves them on the host against the proxy's plain index, wheels only, for the
target's interpreter (``uv pip compile --format pylock.toml``: uv queries only that base interpreter, never
the build's environment); we download each wheel the lock names from the same index and check its sha256.
The build environment is then installed from these files inside the sandbox (builder/runner.py), so no
build requirement's code (a ``.pth`` file, say) ever runs on the host.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

MAX_REQUIREMENTS = 200
MAX_REQUIREMENT_LENGTH = 1000
_CHUNK = 1 << 20


class RequirementError(ValueError):
    """A build requirement the farm will not install, or one it cannot get; the message says which."""


@dataclass(frozen=True, slots=True)
class ResolvedWheel:
    name: str
    version: str
    filename: str
    url: str
    sha256: str
    size: int | None


def check_requirements(raw: object, origin: str) -> list[str]:
    """``raw`` as a list of PEP 508 requirement strings, or RequirementError naming the bad one."""
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise RequirementError(f"{origin} must be a list of strings (PEP 518)")
    if len(raw) > MAX_REQUIREMENTS:
        raise RequirementError(f"{origin} lists {len(raw)} requirements, more than {MAX_REQUIREMENTS}")
    checked = []
    for text in raw:
        if len(text) > MAX_REQUIREMENT_LENGTH:
            raise RequirementError(f"{origin}: a requirement of {len(text)} characters is too long")
        try:
            requirement = Requirement(text)
        except InvalidRequirement as exc:
            raise RequirementError(f"{origin}: {text!r} is not a PEP 508 requirement: {exc}") from None
        if requirement.url:
            raise RequirementError(
                f"{origin}: {text!r} is a direct URL reference; the farm installs build requirements "
                "only from its index"
            )
        checked.append(str(requirement))
    return checked


def resolve(
    requirements: Sequence[str],
    *,
    interpreter: str,
    index_url: str,
    scratch: Path,
    uv: str,
    uv_cache: Path,
    output: Callable[[bytes], None],
    timeout: float,
    constraints: Sequence[str] = (),
) -> list[ResolvedWheel]:
    """Pin ``requirements`` to one wheel each (and their dependencies), for ``interpreter``, within
    ``constraints`` (PEP 508 requirements, checked as build requirements are)."""
    if not requirements:
        return []
    wanted = scratch / "requirements.in"
    wanted.write_text("\n".join(requirements) + "\n", encoding="utf-8")
    lock = scratch / "pylock.toml"
    command = [
        uv, "pip", "compile", "--quiet", "--no-header", "--python", interpreter, "--only-binary", ":all:",
        "--index-url", index_url, "--format", "pylock.toml", "--output-file", str(lock), str(wanted),
    ]  # fmt: skip
    if constraints:
        pins = scratch / "constraints.txt"
        pins.write_text("\n".join(check_requirements(list(constraints), "constraints")) + "\n", "utf-8")
        command += ["--constraint", str(pins)]
    environment = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(scratch),
        "UV_NO_CONFIG": "1",
        "UV_CACHE_DIR": str(uv_cache),
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_HTTP_RETRIES": "1",
    }
    try:
        done = subprocess.run(
            command,
            env=environment,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RequirementError(f"resolving the build requirements took more than {timeout:.0f} s") from None
    output(done.stdout + done.stderr)
    if done.returncode != 0:
        reason = _last_lines(done.stderr) or f"uv exited with status {done.returncode}"
        raise RequirementError(f"cannot resolve the build requirements {list(requirements)}: {reason}")
    return _read_lock(lock, index_url)


def _read_lock(lock: Path, index_url: str) -> list[ResolvedWheel]:
    try:
        document = tomllib.loads(lock.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RequirementError(f"uv wrote no readable lock: {exc}") from None
    resolved = []
    for package in document.get("packages", []):
        wheels = package.get("wheels") or []
        if not wheels:
            raise RequirementError(f"build requirement {package.get('name')} has no wheel for this Python")
        wheel = wheels[0]
        url = str(wheel.get("url", ""))
        if not _same_origin(url, index_url):
            raise RequirementError(f"the index listed {url!r} for {package.get('name')}, not on the index")
        filename = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
        try:
            parse_wheel_filename(filename)
        except InvalidWheelFilename:
            raise RequirementError(f"the index listed {filename!r}, which is not a wheel") from None
        sha256 = str(wheel.get("hashes", {}).get("sha256", ""))
        if len(sha256) != 64:
            raise RequirementError(f"the index gave no sha256 for {filename}")
        size = wheel.get("size")
        resolved.append(
            ResolvedWheel(
                str(package["name"]),
                str(package["version"]),
                filename,
                url,
                sha256,
                int(size) if isinstance(size, int) else None,
            )
        )
    return sorted(resolved, key=lambda w: w.filename)


def download(wheels: Sequence[ResolvedWheel], folder: Path, *, max_bytes: int, timeout: float) -> None:
    """Fetch each wheel into ``folder`` (kept as it is named), checking its size and sha256."""
    opener = urllib.request.build_opener(_NoRedirects)
    for wheel in wheels:
        target = folder / wheel.filename
        if target.exists():
            continue
        partial = folder / f".{wheel.filename}.partial"
        digest = hashlib.sha256()
        length = 0
        deadline = time.monotonic() + timeout  # the whole download, not each read: a trickle cannot hold us
        try:
            with opener.open(wheel.url, timeout=min(timeout, 60.0)) as response, partial.open("wb") as out:
                while chunk := response.read(_CHUNK):
                    length += len(chunk)
                    if length > max_bytes:
                        raise RequirementError(f"{wheel.filename} is larger than {max_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise RequirementError(f"{wheel.filename} did not arrive within {timeout:.0f} s")
                    digest.update(chunk)
                    out.write(chunk)
        except (OSError, urllib.error.URLError) as exc:
            partial.unlink(missing_ok=True)
            raise RequirementError(f"cannot download {wheel.filename}: {exc}") from None
        if digest.hexdigest() != wheel.sha256 or (wheel.size is not None and length != wheel.size):
            partial.unlink(missing_ok=True)
            raise RequirementError(f"{wheel.filename} does not match the sha256 and size its index gave")
        os.replace(partial, target)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # the proxy serves files itself; a redirect would lead off the index


def _same_origin(url: str, index_url: str) -> bool:
    a, b = urllib.parse.urlsplit(url), urllib.parse.urlsplit(index_url)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)


def _last_lines(raw: bytes, count: int = 3) -> str:
    lines = [line.strip() for line in raw.decode(errors="replace").splitlines() if line.strip()]
    return " | ".join(lines[-count:])[-800:]
