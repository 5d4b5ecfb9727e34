"""The benchmark's upstream data, generated on disk once per size profile and described by a manifest.

Three kinds of project, all served by the fake upstream (bench/upstream.py):

- ``bigproject``: a page of 600+ files (120 releases of one sdist and four platform wheels, 100 KB to 1 MB,
  a few yanked, every wheel with PEP 658 metadata), plus the benchmark's two large wheels in its newest
  release: ``BIG`` (200 MB, the warm download) and ``COLD`` (100 MB, asked for by 50 clients at once).
  Large wheels are valid zips with one random member stored uncompressed.
- 30 small real pure-Python projects (``E2E_PROJECTS``) with dependency chains: pip and uv really resolve
  and install them (modules plus a data blob, 20 KB to 2 MB per wheel; older releases are tiny).
- 4 sdist-only projects (``SDIST_PROJECTS``): two pure (flit_core), two with a C extension (setuptools),
  which a client must build itself unless a proxy serves a built wheel. Their build backends come from
  tests/.wheelhouse (``make`` downloads them there).

Everything is deterministic for a profile (seeded random bytes), so hashes are the same across runs.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import random
import shutil
import tarfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
WHEELHOUSE: Final = ROOT / "tests" / ".wheelhouse"
BIG_PROJECT: Final = "bigproject"
_TREES: Final = (
    "acorn alder aspen birch cedar cherry cypress elm fir hazel hemlock holly juniper larch laurel "
    "linden maple myrtle oak olive pine poplar redwood rowan sequoia spruce sumac walnut willow yew"
)
E2E_PROJECTS: Final = tuple(f"{word}-kit" for word in _TREES.split(" "))
SDIST_PROJECTS: Final = ("sdist-pure-a", "sdist-pure-b", "sdist-native-a", "sdist-native-b")
_WHEEL_PLATFORMS: Final = (
    "cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64",
    "cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64",
    "cp311-cp311-macosx_11_0_arm64",
    "cp311-cp311-win_amd64",
)
_CHUNK: Final = 4 << 20


@dataclass(frozen=True)
class Profile:
    """How big the generated data is: ``full`` for the real run, ``quick`` for a smoke run."""

    name: str
    releases: int = 120
    min_file: int = 100_000
    max_file: int = 1_000_000
    big_file: int = 200_000_000
    cold_file: int = 100_000_000
    e2e_max_wheel: int = 2_000_000
    native_functions: int = 400


PROFILES: Final = {
    "full": Profile("full"),
    "quick": Profile(
        "quick",
        min_file=100_000,
        max_file=150_000,
        big_file=20_000_000,
        cold_file=10_000_000,
        e2e_max_wheel=300_000,
        native_functions=100,
    ),
}


@dataclass
class DistFile:
    """One file on the fake upstream, as the manifest lists it."""

    project: str
    filename: str
    path: str
    size: int
    sha256: str
    metadata: str | None = None  # path of the PEP 658 metadata file, if any
    requires_python: str | None = None
    yanked: bool | str = False


@dataclass
class Manifest:
    profile: str
    files: list[DistFile] = field(default_factory=list)
    big: str = ""  # filenames of the warm and cold large wheels
    cold: str = ""
    e2e_requirements: list[str] = field(default_factory=list)
    sdist_requirements: list[str] = field(default_factory=list)

    def file(self, filename: str) -> DistFile:
        return next(f for f in self.files if f.filename == filename)

    def save(self, path: Path) -> None:
        """Written with paths relative to the manifest's folder, so the data can move."""
        data = asdict(self)
        for entry in data["files"]:
            for key in ("path", "metadata"):
                if entry[key]:
                    entry[key] = str(Path(entry[key]).relative_to(path.parent))
        path.write_text(json.dumps(data, indent=1))

    @classmethod
    def load(cls, path: Path) -> Manifest:
        data: dict[str, Any] = json.loads(path.read_text())
        folder = path.parent.resolve()
        files = [DistFile(**f) for f in data.pop("files")]
        for entry in files:
            entry.path = str(folder / entry.path)
            entry.metadata = str(folder / entry.metadata) if entry.metadata else None
        return cls(files=files, **data)


def ensure(profile: Profile, out: Path) -> Manifest:
    """The dataset for `profile` under `out`, generated when missing or made for other parameters."""
    stamp = out / "profile.json"
    manifest_path = out / "manifest.json"
    if stamp.exists() and manifest_path.exists() and json.loads(stamp.read_text()) == asdict(profile):
        return Manifest.load(manifest_path)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    _generate(profile, out.resolve()).save(manifest_path.resolve())
    stamp.write_text(json.dumps(asdict(profile)))
    return Manifest.load(manifest_path)


def _generate(profile: Profile, out: Path) -> Manifest:
    rng = random.Random(20240601)
    manifest = Manifest(profile.name)
    files = out / "files"
    files.mkdir()

    def add(project: str, path: Path, **extra: Any) -> DistFile:
        entry = DistFile(project, path.name, str(path), path.stat().st_size, _sha256(path), **extra)
        if path.suffix == ".whl":
            meta = path.with_name(path.name + ".metadata")
            meta.write_bytes(_wheel_metadata(path))
            entry.metadata = str(meta)
        manifest.files.append(entry)
        return entry

    # bigproject: a long page of realistic sizes, then the two large wheels in the newest release.
    for i in range(profile.releases):
        version = f"1.{i // 10}.{i % 10}"
        yanked: bool | str = "broken build" if i % 37 == 5 else False
        add(
            BIG_PROJECT,
            _random_sdist(files, BIG_PROJECT, version, _size(rng, profile), rng),
            requires_python=">=3.8",
            yanked=yanked,
        )
        for tag in _WHEEL_PLATFORMS:
            wheel = write_wheel(files, BIG_PROJECT, version, tag, blob=_size(rng, profile), rng=rng)
            add(BIG_PROJECT, wheel, requires_python=">=3.8", yanked=yanked)
    big = write_wheel(files, BIG_PROJECT, "2.0.0", _WHEEL_PLATFORMS[0], blob=profile.big_file, rng=rng)
    cold = write_wheel(files, BIG_PROJECT, "2.0.0", _WHEEL_PLATFORMS[1], blob=profile.cold_file, rng=rng)
    manifest.big, manifest.cold = big.name, cold.name
    add(BIG_PROJECT, big, requires_python=">=3.8")
    add(BIG_PROJECT, cold, requires_python=">=3.8")

    # 30 installable projects: six dependency chains of five, each release also with an sdist.
    for n, name in enumerate(E2E_PROJECTS):
        requires = [f"{E2E_PROJECTS[n + 1]}>=1.0"] if n % 5 != 4 else []
        for minor in range(8):
            version = f"1.{minor}"
            latest = minor == 7
            size = (
                int(math.exp(rng.uniform(math.log(20_000), math.log(profile.e2e_max_wheel))))
                if latest
                else 2_000
            )
            modules = rng.randint(5, 40) if latest else 1
            wheel = write_wheel(
                files,
                name,
                version,
                "py3-none-any",
                blob=size,
                rng=rng,
                modules=modules,
                requires=requires,
                compress_blob=True,
            )
            add(name, wheel, requires_python=">=3.8")
            add(name, _random_sdist(files, name, version, 2_000, rng), requires_python=">=3.8")
    manifest.e2e_requirements = list(E2E_PROJECTS)

    # Sdist-only projects and the build backends they need.
    for name in SDIST_PROJECTS:
        add(
            name,
            _buildable_sdist(files, name, "1.0", native="native" in name, functions=profile.native_functions),
        )
    manifest.sdist_requirements = list(SDIST_PROJECTS)
    for wheel in sorted(WHEELHOUSE.glob("*.whl")):
        copy = files / wheel.name
        shutil.copyfile(wheel, copy)
        add(wheel.name.split("-")[0].replace("_", "-").lower(), copy)
    return manifest


def _size(rng: random.Random, profile: Profile) -> int:
    return int(math.exp(rng.uniform(math.log(profile.min_file), math.log(profile.max_file))))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def write_wheel(
    out: Path,
    name: str,
    version: str,
    tag: str,
    *,
    blob: int,
    rng: random.Random,
    modules: int = 1,
    requires: list[str] | None = None,
    compress_blob: bool = False,
) -> Path:
    """A valid wheel: `modules` Python modules, a random data member of `blob` bytes, and dist-info."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    metadata = "".join(
        [
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: benchmark data\n",
            "Requires-Python: >=3.8\n",
            *(f"Requires-Dist: {r}\n" for r in requires or []),
        ]
    )
    pure = tag.startswith("py3")
    wheel_file = f"Wheel-Version: 1.0\nGenerator: wheelfarm-bench\nRoot-Is-Purelib: {str(pure).lower()}\n"
    wheel_file += "".join(f"Tag: {t}\n" for t in _expand(tag))
    path = out / f"{dist}-{version}-{tag}.whl"
    record: list[str] = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for m in range(modules):
            body = f'"""Module {m} of {name} {version}."""\n\nVALUE = {m}\n\n\ndef value() -> int:\n'
            body += "    return VALUE\n"
            member = f"{dist}/{'__init__' if m == 0 else f'mod{m:03d}'}.py"
            archive.writestr(member, body)
            record.append(f"{member},{_record_hash(body.encode())},{len(body)}")
        digest, written = hashlib.sha256(), 0
        blob_info = zipfile.ZipInfo(f"{dist}/_data.bin", (2024, 1, 1, 0, 0, 0))
        # Large wheels: stored, random. Small ones: half random, half zeros, deflated (about 2:1, like code).
        blob_info.compress_type = zipfile.ZIP_DEFLATED if compress_blob else zipfile.ZIP_STORED
        with archive.open(blob_info, "w", force_zip64=True) as data:
            while written < blob:
                size = min(_CHUNK, blob - written)
                chunk = (
                    rng.randbytes(size // 2) + bytes(size - size // 2)
                    if compress_blob
                    else rng.randbytes(size)
                )
                data.write(chunk)
                digest.update(chunk)
                written += size
        hashed = "sha256=" + base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
        record.append(f"{dist}/_data.bin,{hashed},{blob}")
        for member, text in ((f"{info}/METADATA", metadata), (f"{info}/WHEEL", wheel_file)):
            archive.writestr(member, text)
            record.append(f"{member},{_record_hash(text.encode())},{len(text)}")
        record.append(f"{info}/RECORD,,")
        archive.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


def _expand(tag: str) -> list[str]:
    python, abi, platforms = tag.split("-")
    return [f"{python}-{abi}-{platform}" for platform in platforms.split(".")]


def _wheel_metadata(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        return archive.read(name)


def _tar(path: Path, root: str, members: dict[str, bytes], level: int = 6) -> Path:
    with tarfile.open(path, "w:gz", compresslevel=level) as tar:
        for member, data in sorted(members.items()):
            info = tarfile.TarInfo(f"{root}/{member}")
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def _pkg_info(name: str, version: str) -> bytes:
    return f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nRequires-Python: >=3.8\n".encode()


def _random_sdist(out: Path, name: str, version: str, size: int, rng: random.Random) -> Path:
    dist = name.replace("-", "_")
    root = f"{dist}-{version}"
    members = {"PKG-INFO": _pkg_info(name, version), "data.bin": rng.randbytes(size)}
    return _tar(out / f"{root}.tar.gz", root, members, level=1)


def _buildable_sdist(out: Path, name: str, version: str, *, native: bool, functions: int) -> Path:
    """A real sdist: flit_core for a pure package, setuptools plus a C extension of `functions` functions."""
    dist = name.replace("-", "_")
    root = f"{dist}-{version}"
    members = {"PKG-INFO": _pkg_info(name, version)}
    if native:
        members["pyproject.toml"] = (
            f'[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n\n'
            f'[project]\nname = "{name}"\nversion = "{version}"\nrequires-python = ">=3.8"\n\n'
            f'[tool.setuptools]\npackages = ["{dist}"]\n'
        ).encode()
        members["setup.py"] = (
            "from setuptools import Extension, setup\n\n"
            f'setup(ext_modules=[Extension("{dist}._speed", ["{dist}/speed.c"])])\n'
        ).encode()
        members[f"{dist}/__init__.py"] = b"from ._speed import total\n"
        members[f"{dist}/speed.c"] = _c_source(functions).encode()
    else:
        members["pyproject.toml"] = (
            f'[build-system]\nrequires = ["flit_core>=3.4"]\nbuild-backend = "flit_core.buildapi"\n\n'
            f'[project]\nname = "{name}"\nversion = "{version}"\ndescription = "benchmark data"\n'
            f'requires-python = ">=3.8"\n'
        ).encode()
        members[f"{dist}/__init__.py"] = b'"""benchmark data"""\n\nVALUE = 1\n'
        for m in range(40):
            members[f"{dist}/mod{m:02d}.py"] = f"def f{m}(x: int) -> int:\n    return x + {m}\n".encode()
    return _tar(out / f"{root}.tar.gz", root, members)


def _c_source(functions: int) -> str:
    """A C extension whose compile takes a moment: `functions` small loops, summed by `total()`."""
    parts = ["#define PY_SSIZE_T_CLEAN\n#include <Python.h>\n"]
    for i in range(functions):
        parts.append(
            f"static long f{i}(long n) {{ long s = {i}; for (long k = 0; k < n; k++) "
            f"{{ s = (s * 31 + k * {i + 7}) % 1000003; if (s & 1) s ^= k; }} return s; }}\n"
        )
    calls = " + ".join(f"f{i}(n)" for i in range(functions))
    parts.append(
        "static PyObject *total(PyObject *self, PyObject *args) {\n"
        '    long n; if (!PyArg_ParseTuple(args, "l", &n)) return NULL;\n'
        f"    return PyLong_FromLong({calls});\n}}\n"
        'static PyMethodDef methods[] = {{"total", total, METH_VARARGS, NULL}, {NULL, NULL, 0, NULL}};\n'
        'static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_speed", NULL, -1, methods};\n'
        "PyMODINIT_FUNC PyInit__speed(void) { return PyModule_Create(&module); }\n"
    )
    return "".join(parts)
