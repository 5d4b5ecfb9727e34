"""Which system libraries auditwheel copied into a wheel, and the Debian package each came from: a
provenance byproduct (psycopg2's wheel carries the builder's libpq and OpenSSL, whose security fixes are
the builder's distribution's).

auditwheel renames each library it grafts ``<base>-<first 8 hex of the original file's sha256>.<rest>``
(auditwheel/repair.py), in ``<package>.libs/``. The original is found again by that name and hash prefix in
the library folders the sandbox mounts from this host (the same paths as here), and ``dpkg -S`` names its
package. Runs in the worker, on the host: a member name from the wheel is used only after it matched a
strict pattern, and only as a file name in fixed folders and as an argument to dpkg.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sysconfig
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_GRAFTED = re.compile(
    r"(?P<dir>[A-Za-z0-9_.]+\.libs)/(?P<base>[A-Za-z0-9_+]+)-(?P<hash>[0-9a-f]{8})\.(?P<rest>[A-Za-z0-9_.+]+)\Z"
)
DPKG_SECONDS = 10.0
MAX_TRACED = 64  # distinct grafted libraries traced to an original and a package, per wheel


@dataclass(frozen=True)
class Bundled:
    name: str  # the member's path in the wheel
    sha256: str  # of the member as the wheel carries it (patchelf changed it from the original)
    source_path: str = ""  # the original on the builder ("" when it was not found)
    package: str = ""  # the Debian package that installed it ("" when none did)
    package_version: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def library_folders() -> list[Path]:
    """Where the dynamic linker finds system libraries on Debian-like hosts (multiarch first)."""
    triplet = sysconfig.get_config_var("MULTIARCH") or ""
    folders = [f"/usr/lib/{triplet}", f"/lib/{triplet}"] if triplet else []
    folders += ["/usr/local/lib", "/usr/lib64", "/lib64", "/usr/lib", "/lib"]
    return [Path(folder) for folder in dict.fromkeys(folders)]


def bundled_libraries(wheel: Path, folders: list[Path] | None = None) -> list[Bundled]:
    """The grafted libraries of ``wheel``, traced to their originals and packages. The names are the
    build's to choose: each original is looked for once however many members name it, and past
    ``MAX_TRACED`` distinct ones (auditwheel grafts a few dozen at most) the rest are listed untraced."""
    found = []
    traced: dict[tuple[str, str], tuple[Path | None, str, str]] = {}
    searched = folders or library_folders()
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            match = _GRAFTED.match(info.filename)
            if match is None:
                continue
            digest = hashlib.sha256(archive.read(info)).hexdigest()
            source = (f"{match['base']}.{match['rest']}", match["hash"])
            if source not in traced and len(traced) < MAX_TRACED:
                original = _original(*source, searched)
                package, version = _package_of(original) if original is not None else ("", "")
                traced[source] = (original, package, version)
            original, package, version = traced.get(source, (None, "", ""))
            found.append(Bundled(info.filename, digest, str(original or ""), package, version))
    return found


def _original(filename: str, hash_prefix: str, folders: list[Path]) -> Path | None:
    hashes: dict[Path, str] = {}  # with merged /usr, /lib/x and /usr/lib/x are one file: hashed once
    for folder in folders:
        candidate = folder / filename
        try:
            if not candidate.is_file():
                continue
            real = candidate.resolve()
            if real not in hashes:
                hashes[real] = hashlib.sha256(real.read_bytes()).hexdigest()
            if hashes[real].startswith(hash_prefix):
                return candidate
        except OSError:
            continue
    return None


def _package_of(path: Path) -> tuple[str, str]:
    """The Debian package that installed ``path`` and its version; ("", "") when none did or no dpkg.
    dpkg knows a file by the path its package shipped it under: with merged /usr, /lib/x or /usr/lib/x."""
    text = str(path)
    alternatives = [text, text.removeprefix("/usr")] if text.startswith("/usr/") else [text, "/usr" + text]
    for each in alternatives:
        owner = _run(["dpkg", "-S", each])
        if owner:
            package = owner.split(":", 1)[0].split(",")[0].strip()
            version = _run(["dpkg-query", "-W", "-f=${Version}", package])
            return package, version.strip()
    return "", ""


def _run(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=DPKG_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""
