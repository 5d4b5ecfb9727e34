"""Build real sdists and wheels of the tiny projects under tests/projects/, at a version the test chooses.

Each build copies the project to a temporary directory, writes the version (and optionally
Requires-Python) into the copy, and runs the project's own PEP 517 backend (flit_core) through
`build.ProjectBuilder` without isolation: flit_core is installed in the test environment, so no
network and no virtual environment are needed. Nothing is cached between runs.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import build
from packaging.version import Version

PROJECTS_DIR = Path(__file__).parent / "projects"

# The projects keep these as single static lines (PEP 621 `version`; a module-level `__version__`).
_PYPROJECT_VERSION = re.compile(r'^version = ".*"$', re.MULTILINE)
_PYPROJECT_REQUIRES_PYTHON = re.compile(r"^requires-python = .*$", re.MULTILINE)
_MODULE_VERSION = re.compile(r'^__version__ = ".*"$', re.MULTILINE)


@dataclass(frozen=True)
class BuiltProject:
    """One release of a test project: a PEP 625 sdist and a PEP 427 wheel."""

    sdist: Path
    wheel: Path


# (project name, version) -> its built files; what the `built_dists` fixture returns.
BuiltDists = dict[tuple[str, str], BuiltProject]


def build_project(
    project_dir: Path, version: str, out_dir: Path, *, requires_python: str | None = None
) -> BuiltProject:
    """Build an sdist and a wheel of `project_dir` at `version` into `out_dir`.

    `project_dir` is a directory such as `PROJECTS_DIR / "tinypure"`. `requires_python`, when given,
    becomes the PEP 621 `requires-python` field (and so the wheel's `Requires-Python` metadata).
    Raises ValueError for a version that PEP 440 does not allow.
    """
    Version(version)  # packaging.version.InvalidVersion is a ValueError naming the bad input
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{project_dir.name}-{version}-") as tmp:
        srcdir = Path(tmp) / project_dir.name
        shutil.copytree(project_dir, srcdir, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        _set_version(srcdir, version, requires_python)
        builder = build.ProjectBuilder(srcdir, python_executable=sys.executable)
        sdist = Path(builder.build("sdist", out_dir))
        wheel = Path(builder.build("wheel", out_dir))
    return BuiltProject(sdist=sdist, wheel=wheel)


def build_sdist(project_dir: Path, version: str, out_dir: Path) -> Path:
    """Only the sdist of `project_dir` at `version` (for projects whose wheel the proxy must build)."""
    Version(version)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{project_dir.name}-{version}-") as tmp:
        srcdir = Path(tmp) / project_dir.name
        shutil.copytree(project_dir, srcdir, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        _set_version(srcdir, version, None)
        return Path(build.ProjectBuilder(srcdir, python_executable=sys.executable).build("sdist", out_dir))


def make_sdist(out_dir: Path, name: str, version: str, files: dict[str, str], *, flat: bool = False) -> Path:
    """An sdist written by hand (no backend runs on the host): ``files`` maps paths inside the
    ``name-version/`` folder to their text (``flat``: at the archive's root, as old maturin wrote them).
    PKG-INFO is added. For hostile and broken test sdists."""
    out_dir.mkdir(parents=True, exist_ok=True)
    root = f"{name}-{version}"
    path = out_dir / f"{root}.tar.gz"
    contents = {"PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", **files}
    with tarfile.open(path, "w:gz") as tar:
        for member, text in sorted(contents.items()):
            data = text.encode()
            info = tarfile.TarInfo(member if flat else f"{root}/{member}")
            info.size = len(data)
            info.mtime = 1_700_000_000
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def in_tree_backend_sdist(
    out_dir: Path,
    name: str,
    version: str,
    build_wheel_body: str,
    *,
    requires: tuple[str, ...] = (),
    requires_body: str = "    return []",
    flat: bool = False,
) -> Path:
    """An sdist whose PEP 517 backend is its own ``backend.py``: its ``build_wheel`` runs
    ``build_wheel_body`` (indented Python), then writes a real, minimal wheel; its
    ``get_requires_for_build_wheel`` runs ``requires_body``. ``requires`` is ``[build-system] requires``."""
    backend = _IN_TREE_BACKEND.format(
        name=name.replace("-", "_"), version=version, body=build_wheel_body, requires_body=requires_body
    )
    pyproject = (
        f"[build-system]\nrequires = {json.dumps(list(requires))}\n"
        'build-backend = "backend"\nbackend-path = ["."]\n'
    )
    return make_sdist(out_dir, name, version, {"pyproject.toml": pyproject, "backend.py": backend}, flat=flat)


_IN_TREE_BACKEND = """\
import base64, hashlib, os, zipfile

def get_requires_for_build_wheel(config_settings=None):
{requires_body}

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
{body}
    name, version = "{name}", "{version}"
    filename = f"{{name}}-{{version}}-py3-none-any.whl"
    info = f"{{name}}-{{version}}.dist-info"
    files = {{
        f"{{name}}.py": b"VALUE = 1\\n",
        f"{{info}}/METADATA": f"Metadata-Version: 2.1\\nName: {{name}}\\nVersion: {{version}}\\n".encode(),
        f"{{info}}/WHEEL": (
            b"Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
        ),
    }}
    record = []
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{{path}},sha256={{digest}},{{len(data)}}")
        record.append(f"{{info}}/RECORD,,")
        wheel.writestr(f"{{info}}/RECORD", "\\n".join(record) + "\\n")
    return filename
"""


# A backend that writes its wheel with fixed zip timestamps: the same bytes every time.
FIXED_TIMES = """\
    original = zipfile.ZipFile.writestr
    def writestr(self, name, data, *args, **kwargs):
        if isinstance(name, str):
            name = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        return original(self, name, data, *args, **kwargs)
    zipfile.ZipFile.writestr = writestr
"""
# And one whose module differs every time (a value made at build time): its own complete wheel.
RANDOM_VALUE = """\
    name, info = "random_every_time", "random_every_time-1.0.dist-info"
    filename = f"{name}-1.0-py3-none-any.whl"
    files = {
        f"{name}.py": f"VALUE = {os.urandom(8).hex()!r}\\n".encode(),
        f"{info}/METADATA": b"Metadata-Version: 2.1\\nName: random-every-time\\nVersion: 1.0\\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\n"
        b"Tag: py3-none-any\\n",
    }
    record, when = [], (1980, 1, 1, 0, 0, 0)
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w") as wheel:
        for path, data in files.items():
            wheel.writestr(zipfile.ZipInfo(path, date_time=when), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(data)}")
        record.append(f"{info}/RECORD,,")
        wheel.writestr(zipfile.ZipInfo(f"{info}/RECORD", date_time=when), "\\n".join(record) + "\\n")
    return filename
"""


def wheel_metadata(wheel: Path) -> bytes:
    """The `*.dist-info/METADATA` file of a wheel: what PEP 658 serves as `<wheel>.metadata`."""
    with zipfile.ZipFile(wheel) as archive:
        names = [
            name
            for name in archive.namelist()
            if name.count("/") == 1 and name.endswith(".dist-info/METADATA")
        ]
        if len(names) != 1:
            raise ValueError(f"{wheel.name}: expected one .dist-info/METADATA, found {names}")
        return archive.read(names[0])


def _set_version(srcdir: Path, version: str, requires_python: str | None) -> None:
    pyproject = srcdir / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    text, count = _PYPROJECT_VERSION.subn(f"version = {_toml_string(version)}", text)
    if count != 1:
        raise ValueError(f"{pyproject}: expected one static `version = ...` line, found {count}")
    if requires_python is not None:
        line = f"requires-python = {_toml_string(requires_python)}"
        text, count = _PYPROJECT_REQUIRES_PYTHON.subn(line, text)
        if count == 0:
            text = _PYPROJECT_VERSION.sub(lambda match: f"{match.group(0)}\n{line}", text)
    pyproject.write_text(text, encoding="utf-8")
    for init in sorted(srcdir.glob("*/__init__.py")):
        module = init.read_text(encoding="utf-8")
        init.write_text(_MODULE_VERSION.sub(f"__version__ = {_toml_string(version)}", module), "utf-8")


def _toml_string(value: str) -> str:
    # A JSON string of printable text is also a TOML basic string and a Python string literal.
    return json.dumps(value)


def make_wheel(
    out_dir: Path, name: str, version: str, files: dict[str, bytes], *, requires: tuple[str, ...] = ()
) -> Path:
    """A py3-none-any wheel written by hand, with a right METADATA, WHEEL and RECORD: ``files`` maps paths
    inside the wheel to their bytes (for build requirements the tests publish)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{name.replace('-', '_')}-{version}"
    info = f"{stem}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {requirement}\n" for requirement in requires)
    contents = {
        **files,
        f"{info}/METADATA": metadata.encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    path = out_dir / f"{stem}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(path, "w") as wheel:
        for member, data in contents.items():
            wheel.writestr(zipfile.ZipInfo(member, date_time=(2023, 11, 14, 22, 13, 20)), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{member},sha256={digest},{len(data)}")
        record.append(f"{info}/RECORD,,")
        wheel.writestr(
            zipfile.ZipInfo(f"{info}/RECORD", date_time=(2023, 11, 14, 22, 13, 20)), "\n".join(record) + "\n"
        )
    return path
