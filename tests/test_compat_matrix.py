"""The client compatibility matrix (README.md, "Client compatibility"): real clients, old and new, through one
proxy with its builder pool.

Each pip release of PIP_MATRIX runs on the oldest and the newest CPython here that it declares support for
(Requires-Python and its "Programming Language :: Python :: 3.x" classifiers; the first test checks the
table against the wheels), and so do the project's uv, poetry and pdm (their ranges are explained where
they are set). Every combination installs, in a fresh environment, through the proxy:

- the wheel project, tinypure 2.0 (Requires-Python >=3.8; on older Pythons it must be refused and
  tinypure 1.0, the newest release they can have, installs instead);
- the sdist-only project, tinypure 3.0. For a target the farm builds (CPython 3.8 and newer) the build of
  this target is forgotten first, so the client meets the build-pending link: it must install the farm's
  wheel, not build one itself, and a second install in a fresh environment (for poetry and pdm: from the
  lock file the first one wrote) must get the built wheel the page then lists. An older target must get a
  plain page, and the client builds the sdist itself (the index has flit_core 3.9.0, which runs there).

pip and uv use /simple/ (the proxy reads their target from the User-Agent); poetry and pdm use
/t/<target>/simple/. Whether a client got the farm's wheel is read from what it downloaded (upstream has
no tinypure 3.0 wheel, so any is the farm's), from its output (no local build), and from the builder's
records.

The clients come from tests/.clients, which `make test` fills once (Makefile, CLIENTS). The measured table
is written to <pytest's base temp>/compat-matrix.md and printed at the end of the module.
"""

from __future__ import annotations

import contextlib
import email.parser
import enum
import os
import platform
import re
import shutil
import subprocess
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final

import httpx
import pytest
from buildkit import WHEELHOUSE, build_records, delete_build, start_builder_proxy
from clientenv import UV, clean_env, make_venv, venv_python
from conftest import RELEASES
from dists import BuiltDists, wheel_metadata
from fake_upstream import FakeFile, FakeIndex, FakeUpstreamServer
from fakes import FakeClock, ProxyServer
from packaging.specifiers import SpecifierSet

from builder.interpreters import find_interpreter

CLIENTS_DIR: Final = Path(__file__).resolve().parent / ".clients"  # `make test` fills it (Makefile, CLIENTS)
PIP_WHEELS: Final = CLIENTS_DIR / "pip"
OLD_BACKENDS: Final = CLIENTS_DIR / "backends"  # flit_core 3.9.0: builds tinypure on Pythons 3.6 and 3.7
POETRY: Final = CLIENTS_DIR / "poetry" / "bin" / "poetry"
PDM: Final = CLIENTS_DIR / "pdm" / "bin" / "pdm"
PDM_COMPAT: Final = CLIENTS_DIR / "pdm-compat"  # what pdm would fetch from PyPI for Pythons before 3.10

# The CPythons of this machine (pyenv), and the oldest one the farm builds for.
PYTHONS_HERE: Final = ("3.6", "3.7", "3.8", "3.9", "3.10", "3.11", "3.12", "3.13")
FARM_MIN_PYTHON: Final = (3, 8)

# (pip, oldest Python, newest Python): what each release declares, within PYTHONS_HERE (2.7 left out).
PIP_MATRIX: Final = (
    ("20.3.4", "3.6", "3.9"),
    ("21.3.1", "3.6", "3.10"),
    ("22.3.1", "3.7", "3.11"),
    ("23.0.1", "3.7", "3.11"),
    ("23.2.1", "3.7", "3.12"),
    ("24.3.1", "3.8", "3.13"),
    ("26.3", "3.10", "3.13"),  # the newest pip (Makefile, COMPAT_PIPS)
)
# uv's Python policy: Tier 2 ("expected to work") for 3.6 to 3.9, Tier 1 from 3.10.
UV_PYTHONS: Final = ("3.6", "3.13")
# poetry's and pdm's own virtualenvs cannot hold an older Python: both run 3.8 syntax inside the project's
# environment (virtualenv's _virtualenv.py, pdm's env_spec.py), and poetry's virtualenv seeds pip only for
# 3.9 and newer, so poetry runs with virtualenvs.options.no-pip (poetry itself never needs pip there).
POETRY_PYTHONS: Final = ("3.8", "3.13")
PDM_PYTHONS: Final = ("3.8", "3.13")


class Project(enum.Enum):
    WHEEL = "wheel"
    SDIST_ONLY = "sdist-only"


# What a client prints for each wheel it downloads (or, uv, selects), and when it builds tinypure itself.
FETCHED: Final = {
    "pip": re.compile(r"Downloading (?:\S*/)?(tinypure-[^\s/]+?\.whl)\s"),
    "uv": re.compile(r"Selecting: tinypure==\S+ \[compatible\] \((tinypure-\S+?\.whl)\)"),
    "poetry": re.compile(r'"GET \S*/(tinypure-[^\s/]+?\.whl) HTTP/1\.1" 20[06]'),
    "pdm": re.compile(r"Downloading <Link \S*/(tinypure-[^\s/]+?\.whl) "),
}
BUILT_LOCALLY: Final = {
    "pip": "Building wheel for tinypure",
    "uv": "Built tinypure==",
    "poetry": "[build:build] Building wheel",  # with -vvv
    "pdm": "Running PEP 517 backend to build a wheel",  # with -v
}
# How each refuses tinypure 2.0 (Requires-Python >=3.8) on an older Python.
REFUSED_FOR_PYTHON: Final = {
    "pip": "No matching distribution found for tinypure==2.0",
    "uv": "depends on Python>=3.8",
}


def python_tuple(version: str) -> tuple[int, int]:
    major, minor = version.split(".")
    return int(major), int(minor)


def host_target(python: str) -> str:
    """The target a client of CPython `python` on this machine is (the builder builds on the same host)."""
    libc = os.confstr("CS_GNU_LIBC_VERSION") or ""  # "glibc 2.36"
    match = re.fullmatch(r"glibc (\d+)\.(\d+)", libc)
    assert match is not None, f"not a glibc system: {libc!r}"
    return f"cp{python.replace('.', '')}-manylinux_{match[1]}_{match[2]}_{platform.machine()}"


def pending_name(target: str) -> str:
    """The build-pending link's wheel name for tinypure 3.0 (README, "Built wheels")."""
    interpreter, platform_tag = target.split("-", 1)
    return f"tinypure-3.0-{interpreter}-{interpreter}-{platform_tag}.whl"


def requires_python(metadata: bytes) -> str | None:
    return email.parser.BytesParser().parsebytes(metadata).get("Requires-Python")


# --- running clients ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One client command: what it was for, its argv, exit status and output (stdout and stderr merged)."""

    what: str
    command: tuple[str, ...]
    returncode: int
    output: str

    def tail(self, lines: int = 50) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


class StepFailed(AssertionError):
    """A step of a case did not do what it must; carries the run, whose output names known bugs."""

    def __init__(self, run: Run, problem: str) -> None:
        super().__init__(f"{run.what}: {problem}\n$ {' '.join(run.command)}\n{run.tail()}")
        self.run = run


def run(what: str, command: Sequence[str | Path], env: Mapping[str, str], cwd: Path) -> Run:
    completed = subprocess.run(
        [str(part) for part in command],
        env=dict(env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=180,
        check=False,
    )
    return Run(what, tuple(str(part) for part in command), completed.returncode, completed.stdout)


def succeeded(result: Run) -> Run:
    if result.returncode != 0:
        raise StepFailed(result, f"exited {result.returncode}")
    return result


@dataclass(frozen=True)
class Installed:
    """A client run that installed into an environment, and that environment's python."""

    run: Run
    python: Path
    env: Mapping[str, str]

    def hello(self) -> str:
        """What the installed tinypure says (it prints its version); raises StepFailed when it is missing."""
        code = "import tinypure; print(tinypure.hello())"
        check = run(f"{self.run.what}: import", [self.python, "-I", "-c", code], self.env, self.python.parent)
        if check.returncode != 0:
            raise StepFailed(self.run, f"tinypure does not import afterwards:\n{check.output}")
        return check.output.strip()


class Installer:
    """One client on one Python: installs a requirement into a fresh environment through the proxy."""

    client: ClassVar[str]

    def __init__(self, matrix: Matrix, python: str, interpreter: Path, work: Path) -> None:
        self.matrix = matrix
        self.python = python
        self.interpreter = interpreter
        self.work = work
        self.target = host_target(python)
        self._count = 0

    def install(self, requirement: str, what: str) -> Installed:
        raise NotImplementedError

    def again(self, requirement: str, what: str) -> Installed:
        """The same requirement once more, in a fresh environment (poetry and pdm: from their lock file)."""
        return self.install(requirement, what)

    def page(self) -> tuple[str | None, list[str]]:
        """(the target the proxy read, the files of tinypure's page) as this client gets the page. uv's
        User-Agent cannot be had outside uv, so for uv this is the /t/ page of its target; what uv then
        fetches shows that it got the same page."""
        return self.matrix.page(f"/t/{self.target}/simple/tinypure/", {})

    def fresh_dir(self) -> Path:
        self._count += 1
        folder = self.work / f"run{self._count}"
        folder.mkdir(parents=True)
        return folder

    def fetched(self, result: Run) -> list[str]:
        return sorted(set(FETCHED[self.client].findall(result.output)))

    def built_locally(self, result: Run) -> bool:
        return BUILT_LOCALLY[self.client] in result.output


class PipInstaller(Installer):
    client = "pip"

    def __init__(self, matrix: Matrix, python: str, interpreter: Path, work: Path, template: Path) -> None:
        super().__init__(matrix, python, interpreter, work)
        self.template = template

    def install(self, requirement: str, what: str) -> Installed:
        folder = self.fresh_dir()
        venv = folder / "venv"
        shutil.copytree(self.template, venv, symlinks=True)  # `python -m pip` works in a copied venv
        env = clean_env(folder / "home")
        pip: list[str | Path] = [venv_python(venv), "-m", "pip", "install", "--no-cache-dir"]
        result = run(what, [*pip, "--index-url", self.matrix.proxy.simple_url, requirement], env, folder)
        return Installed(result, venv_python(venv), env)

    def page(self) -> tuple[str | None, list[str]]:
        # The page pip gets: /simple/ with this very pip's User-Agent.
        code = "from pip._internal.network.session import user_agent; print(user_agent())"
        env = clean_env(self.work / "ua-home")
        agent = succeeded(run("user agent", [venv_python(self.template), "-I", "-c", code], env, self.work))
        return self.matrix.page("/simple/tinypure/", {"User-Agent": agent.output.strip()})


class UvInstaller(Installer):
    client = "uv"

    def install(self, requirement: str, what: str) -> Installed:
        folder = self.fresh_dir()
        env = clean_env(folder / "home")
        venv = make_venv(folder / "venv", env, interpreter=self.interpreter)
        command: list[str | Path] = [UV, "pip", "install", "-v", "--no-config", "--no-cache"]
        command += ["--link-mode=copy", "--python", venv_python(venv)]
        command += ["--index-url", self.matrix.proxy.simple_url, requirement]
        return Installed(run(what, command, env, folder), venv_python(venv), env)


class ProjectInstaller(Installer):
    """poetry and pdm: a throwaway project whose only index is /t/<target>/simple/."""

    def __init__(self, matrix: Matrix, python: str, interpreter: Path, work: Path) -> None:
        super().__init__(matrix, python, interpreter, work)
        self.project = work / "project"
        self.home = work / "home"
        self.project.mkdir(parents=True)
        self.project.joinpath("pyproject.toml").write_text(self.pyproject(), encoding="utf-8")

    @property
    def index_url(self) -> str:
        return f"{self.matrix.proxy.url}/t/{self.target}/simple/"

    def pyproject(self) -> str:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        raise NotImplementedError

    def command(self, *args: str | Path) -> list[str | Path]:
        raise NotImplementedError

    def fresh_environment(self) -> dict[str, str]:
        """Remove the project's environment and the client's cache; the lock file stays."""
        shutil.rmtree(self.project / ".venv", ignore_errors=True)
        shutil.rmtree(self.home / "cache", ignore_errors=True)
        return self.env()

    def install(self, requirement: str, what: str) -> Installed:
        env = self.fresh_environment()
        succeeded(run(f"{what}: select Python", self.use_python(), env, self.project))
        result = run(what, self.command("add", *self.verbose(), requirement), env, self.project)
        return Installed(result, venv_python(self.project / ".venv"), env)

    def again(self, requirement: str, what: str) -> Installed:
        env = self.fresh_environment()
        succeeded(run(f"{what}: select Python", self.use_python(), env, self.project))
        result = run(what, self.command(*self.from_lock(), *self.verbose()), env, self.project)
        return Installed(result, venv_python(self.project / ".venv"), env)

    def use_python(self) -> list[str | Path]:
        raise NotImplementedError

    def verbose(self) -> list[str]:
        raise NotImplementedError

    def from_lock(self) -> list[str]:
        raise NotImplementedError


class PoetryInstaller(ProjectInstaller):
    client = "poetry"

    def pyproject(self) -> str:
        return f"""\
[project]
name = "compat-probe"
version = "0"
requires-python = "=={self.python}.*"
dependencies = []

[tool.poetry]
package-mode = false

[[tool.poetry.source]]
name = "wheelfarm"
url = "{self.index_url}"
priority = "primary"
"""

    def env(self) -> dict[str, str]:
        return clean_env(
            self.home,
            {
                "POETRY_CACHE_DIR": str(self.home / "cache"),
                "POETRY_CONFIG_DIR": str(self.home / "config"),
                "POETRY_DATA_DIR": str(self.home / "data"),
                "POETRY_VIRTUALENVS_IN_PROJECT": "true",
                "POETRY_VIRTUALENVS_OPTIONS_NO_PIP": "true",
                "POETRY_NO_INTERACTION": "1",
                "POETRY_KEYRING_ENABLED": "false",
                "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring",
            },
        )

    def command(self, *args: str | Path) -> list[str | Path]:
        return [POETRY, *args]

    def use_python(self) -> list[str | Path]:
        return self.command("env", "use", self.interpreter)

    def verbose(self) -> list[str]:
        return ["-vvv"]  # the HTTP requests (urllib3's debug lines) show which files it fetched

    def from_lock(self) -> list[str]:
        return ["install"]


class PdmInstaller(ProjectInstaller):
    client = "pdm"

    def pyproject(self) -> str:
        return f"""\
[project]
name = "compat-probe"
version = "0"
requires-python = "=={self.python}.*"
dependencies = []

[tool.pdm]
distribution = false

[[tool.pdm.source]]
name = "pypi"
url = "{self.index_url}"
"""

    def env(self) -> dict[str, str]:
        cache = self.home / "cache"
        if python_tuple(self.python) < (3, 10) and not (cache / ".compat_libs").exists():
            shutil.copytree(PDM_COMPAT, cache / ".compat_libs")
        return clean_env(
            self.home,
            {
                "PDM_CACHE_DIR": str(cache),
                "PDM_CHECK_UPDATE": "false",
                "PDM_NON_INTERACTIVE": "1",
                "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring",
                # pdm falls back on pip for what it lacks: never let that reach the real index.
                "PIP_NO_INDEX": "1",
            },
        )

    def command(self, *args: str | Path) -> list[str | Path]:
        return [PDM, *args]

    def use_python(self) -> list[str | Path]:
        return self.command("use", "-f", self.interpreter)

    def verbose(self) -> list[str]:
        return ["-v"]

    def from_lock(self) -> list[str]:
        return ["sync"]


# --- the shared proxy and the table ------------------------------------------------------------------------


@dataclass
class Row:
    """What one case measured: whether the install worked, and (sdist-only) whether the farm built it."""

    client: str
    version: str
    python: str
    project: Project
    works: str = ""
    farm: str = ""


@dataclass
class Matrix:
    """The module's proxy (with builders) in front of a fake upstream, and the rows measured so far."""

    proxy: ProxyServer
    sdist_sha256: str  # tinypure-3.0.tar.gz's
    work: Path
    rows: list[Row] = field(default_factory=list)
    pip_templates: dict[tuple[str, str], Path] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def record(self, target: str) -> dict[str, Any] | None:
        """The finished build of tinypure 3.0 for ``target``, as the admin API lists it."""
        found = [r for r in build_records(self.proxy, "tinypure") if r["key"]["target"] == target]
        return found[0] if found else None

    def page(self, path: str, headers: Mapping[str, str]) -> tuple[str | None, list[str]]:
        response = httpx.get(f"{self.proxy.url}{path}?format=json", headers=dict(headers), timeout=30)
        response.raise_for_status()
        return response.headers.get("X-Wheelfarm-Target"), [f["filename"] for f in response.json()["files"]]

    def interpreter(self, python: str) -> Path:
        found = find_interpreter(python)
        if found is None:
            pytest.skip(f"no CPython {python} on this machine")
        return found

    def pip_template(self, version: str, python: str, interpreter: Path) -> Path:
        """A venv of `interpreter` with pip `version` installed offline from its wheel (made once)."""
        if (version, python) in self.pip_templates:
            return self.pip_templates[version, python]
        wheels = sorted(PIP_WHEELS.glob(f"pip-{version}-*.whl"))
        assert wheels, f"no pip {version} wheel in {PIP_WHEELS}: run `make test` (or rm -rf it first)"
        folder = self.work / f"pip-{version}-py{python}"
        env = clean_env(folder / "home")
        venv = make_venv(folder / "venv", env, interpreter=interpreter)
        # pip runs from its own wheel to install that wheel (as get-pip and virtualenv do), offline.
        wheel = wheels[0]
        install: list[str | Path] = [venv_python(venv), wheel / "pip", "install", "--no-index"]
        succeeded(run(f"installing pip {version}", [*install, "--no-cache-dir", wheel], env, folder))
        shown = succeeded(run("pip --version", [venv_python(venv), "-m", "pip", "--version"], env, folder))
        assert shown.output.startswith(f"pip {version} from "), shown.output
        self.pip_templates[version, python] = venv
        return venv

    def version_of(self, tool: Path) -> str:
        if tool.name not in self.versions:
            env = clean_env(self.work / "version-home")
            shown = succeeded(run(f"{tool.name} --version", [tool, "--version"], env, self.work)).output
            match = re.search(r"\d+\.\d+(?:\.\d+)?", shown)
            assert match is not None, shown
            self.versions[tool.name] = match[0]
        return self.versions[tool.name]

    @contextlib.contextmanager
    def case(self, row: Row) -> Iterator[Row]:
        """Run one case and record its row, whatever happens (the table shows failures too)."""
        try:
            yield row
        except AssertionError as failure:
            step = failure.run.what if isinstance(failure, StepFailed) else "a check of the proxy"
            row.works = f"no: failed in the {step}"
            self.rows.append(row)
            raise
        self.rows.append(row)

    def table(self) -> str:
        """One line per client, version and Python: both projects, and whether the farm built tinypure 3.0."""
        order = {"pip": 0, "uv": 1, "poetry": 2, "pdm": 3}
        combos: dict[tuple[str, str, str], dict[Project, Row]] = {}
        for row in self.rows:
            combos.setdefault((row.client, row.version, row.python), {})[row.project] = row

        def key(combo: tuple[str, str, str]) -> tuple[int, tuple[int, ...], tuple[int, int]]:
            client, version, python = combo
            return (
                order[client],
                tuple(int(p) for p in version.split(".") if p.isdigit()),
                python_tuple(python),
            )

        lines = [
            "| client | version | Python | tinypure 2.0 (wheel) | tinypure 3.0 (sdist only) | farm's wheel |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for combo in sorted(combos, key=key):
            wheel, sdist = combos[combo].get(Project.WHEEL), combos[combo].get(Project.SDIST_ONLY)
            cells = (
                *combo,
                wheel.works if wheel else "not run",
                sdist.works if sdist else "not run",
                (sdist.farm or "no") if sdist else "not run",
            )
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def matrix(
    built_dists: BuiltDists,
    sdists: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Matrix]:
    """One proxy for the whole module: tinypure 1.0 and 2.0 (wheel and sdist), 3.0 (sdist only), and the
    build backends, each file with its Requires-Python as PyPI lists it."""
    assert sorted(WHEELHOUSE.glob("*.whl")), "run `make test` (it downloads the build backends)"
    assert (CLIENTS_DIR / ".done").exists(), "run `make test` (it downloads the clients into tests/.clients)"
    started = time.monotonic()
    index = FakeIndex()
    requires = {(project, version): rp for project, version, rp in RELEASES}
    for version in ("1.0", "2.0"):
        built, rp = built_dists["tinypure", version], requires["tinypure", version]
        index.add_file("tinypure", FakeFile.from_path(built.sdist, requires_python=rp))
        metadata = wheel_metadata(built.wheel)
        index.add_file("tinypure", FakeFile.from_path(built.wheel, requires_python=rp, metadata=metadata))
    sdist = index.add_file("tinypure", FakeFile.from_path(sdists["tinypure"]))
    for wheel in [*sorted(WHEELHOUSE.glob("*.whl")), *sorted(OLD_BACKENDS.glob("*.whl"))]:
        metadata = wheel_metadata(wheel)
        backend = FakeFile.from_path(wheel, requires_python=requires_python(metadata), metadata=metadata)
        index.add_file(wheel.name.split("-")[0], backend)
    work = tmp_path_factory.mktemp("compat")
    with FakeUpstreamServer(index) as upstream:
        proxy = start_builder_proxy(upstream, FakeClock(), work / "cache")
        matrix = Matrix(proxy, sdist.sha256, work)
        try:
            yield matrix
        finally:
            proxy.stop()
            table = matrix.table()
            table += f"\n{len(matrix.rows)} cases in {time.monotonic() - started:.0f} s.\n"
            path = tmp_path_factory.getbasetemp() / "compat-matrix.md"
            path.write_text(table, encoding="utf-8")
            # Printed past pytest's output capture (as capsys.disabled() does): teardown output is captured.
            reporter = request.config.pluginmanager.get_plugin("terminalreporter")
            capture = request.config.pluginmanager.get_plugin("capturemanager")
            if reporter is not None and capture is not None:
                with capture.global_and_fixture_disabled():
                    reporter.write("\n")  # off the line of progress dots
                    reporter.write_sep("-", f"client compatibility matrix (also in {path})")
                    for line in table.splitlines():
                        reporter.write_line(line)


# --- the two projects, for any client ----------------------------------------------------------------------


def expect_fetched(installer: Installer, installed: Installed, wheels: list[str], *, or_: str = "") -> None:
    """It fetched ``wheels`` (or the one wheel named ``or_``, another name of the same file)."""
    fetched = installer.fetched(installed.run)
    if fetched != wheels and not (or_ and fetched == [or_]):
        raise StepFailed(installed.run, f"expected it to fetch {wheels}, it fetched {fetched}")
    if installer.built_locally(installed.run):
        raise StepFailed(installed.run, "the client built tinypure itself")


def expect_hello(installed: Installed, version: str) -> None:
    said = installed.hello()
    if said != f"tinypure {version}":
        raise StepFailed(installed.run, f"tinypure says {said!r}, not 'tinypure {version}'")


def wheel_project(installer: Installer, row: Row) -> None:
    """tinypure 2.0 from upstream's wheel; where its Requires-Python excludes the client, 1.0 instead."""
    if python_tuple(installer.python) >= FARM_MIN_PYTHON:
        installed = installer.install("tinypure==2.0", "install")
        succeeded(installed.run)
        expect_hello(installed, "2.0")
        expect_fetched(installer, installed, ["tinypure-2.0-py3-none-any.whl"])
        row.works = "yes"
        return
    refused = installer.install("tinypure==2.0", "install of 2.0")
    if refused.run.returncode == 0 or REFUSED_FOR_PYTHON[installer.client] not in refused.run.output:
        raise StepFailed(refused.run, "tinypure 2.0 must be refused for its Requires-Python")
    installed = installer.install("tinypure==1.0", "install of 1.0")
    succeeded(installed.run)
    expect_hello(installed, "1.0")
    expect_fetched(installer, installed, ["tinypure-1.0-py2.py3-none-any.whl"])
    row.works = "yes: 1.0 (2.0 needs 3.8+)"


def sdist_only_project(installer: Installer, row: Row) -> None:
    """tinypure 3.0, which upstream has as an sdist only: the farm's wheel for 3.8+, the client's own build
    from a plain page before."""
    matrix, target = installer.matrix, installer.target
    if python_tuple(installer.python) < FARM_MIN_PYTHON:
        seen, listed = installer.page()
        assert seen == target, f"the proxy read the target {seen}, not {target}"
        assert [name for name in listed if name.startswith("tinypure-3.0")] == ["tinypure-3.0.tar.gz"], listed
        row.farm = "no: plain page"
        installed = installer.install("tinypure==3.0", "install")
        succeeded(installed.run)
        expect_hello(installed, "3.0")
        if not installer.built_locally(installed.run):
            raise StepFailed(installed.run, "the client did not build the sdist, yet the page is plain")
        assert installer.fetched(installed.run) == []
        assert matrix.record(target) is None
        row.works = "yes: built by the client"
        return
    delete_build(
        matrix.proxy, matrix.sdist_sha256, target
    )  # this client meets the build-pending link, not a wheel an earlier case built
    seen, listed = installer.page()
    assert seen == target, f"the proxy read the target {seen}, not {target}"
    assert pending_name(target) in listed, listed
    first = installer.install("tinypure==3.0", "first install")  # follows the build-pending link
    succeeded(first.run)
    expect_hello(first, "3.0")
    expect_fetched(installer, first, [pending_name(target)])
    record = matrix.record(target)
    assert record is not None
    assert record["state"] == "done", record
    row.farm = "yes"
    second = installer.again("tinypure==3.0", "second install")  # gets the built wheel the page lists
    succeeded(second.run)
    expect_hello(second, "3.0")
    # The page lists it under its real name and, for locks that recorded it, under the pending link's name
    # (the same URL and sha256): a client may pick either.
    expect_fetched(installer, second, [record["wheel"]], or_=pending_name(target))
    row.works = "yes"


def run_project(installer: Installer, project: Project, row: Row) -> None:
    if project is Project.WHEEL:
        wheel_project(installer, row)
    else:
        sdist_only_project(installer, row)


# --- the tests ---------------------------------------------------------------------------------------------


def declared_pythons(wheel: Path) -> tuple[str, str]:
    """The oldest and newest of PYTHONS_HERE that a pip wheel's Requires-Python and classifiers allow."""
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
        metadata = email.parser.BytesParser().parsebytes(archive.read(name))
    specifier = SpecifierSet(metadata.get("Requires-Python") or "")
    classified = {
        match[1]
        for line in metadata.get_all("Classifier") or []
        if (match := re.fullmatch(r"Programming Language :: Python :: (3\.\d+)", line.strip()))
    }
    allowed = [
        v for v in PYTHONS_HERE if specifier.contains(f"{v}.0") and (not classified or v in classified)
    ]
    return allowed[0], allowed[-1]


@pytest.mark.parametrize(("pip", "oldest", "newest"), PIP_MATRIX, ids=[pip for pip, _, _ in PIP_MATRIX])
def test_the_pip_matrix_is_what_each_release_declares(pip: str, oldest: str, newest: str) -> None:
    (wheel,) = sorted(PIP_WHEELS.glob(f"pip-{pip}-*.whl"))
    assert declared_pythons(wheel) == (oldest, newest)


PIP_CASES: Final = [
    (pip, python, project)
    for pip, oldest, newest in PIP_MATRIX
    for python in (oldest, newest)
    for project in Project
]


@pytest.mark.parametrize(
    ("pip", "python", "project"),
    PIP_CASES,
    ids=[f"{pip}-py{python}-{project.value}" for pip, python, project in PIP_CASES],
)
def test_pip(matrix: Matrix, pip: str, python: str, project: Project, tmp_path: Path) -> None:
    interpreter = matrix.interpreter(python)
    row = Row("pip", pip, python, project)
    with matrix.case(row):
        template = matrix.pip_template(pip, python, interpreter)
        run_project(PipInstaller(matrix, python, interpreter, tmp_path, template), project, row)


def other_cases(pythons: Sequence[str]) -> list[tuple[str, Project]]:
    return [(python, project) for python in pythons for project in Project]


def other_ids(pythons: Sequence[str]) -> list[str]:
    return [f"py{python}-{project.value}" for python, project in other_cases(pythons)]


@pytest.mark.parametrize(("python", "project"), other_cases(UV_PYTHONS), ids=other_ids(UV_PYTHONS))
def test_uv(matrix: Matrix, python: str, project: Project, tmp_path: Path) -> None:
    interpreter = matrix.interpreter(python)
    row = Row("uv", matrix.version_of(UV), python, project)
    with matrix.case(row):
        run_project(UvInstaller(matrix, python, interpreter, tmp_path), project, row)


@pytest.mark.parametrize(("python", "project"), other_cases(POETRY_PYTHONS), ids=other_ids(POETRY_PYTHONS))
def test_poetry(matrix: Matrix, python: str, project: Project, tmp_path: Path) -> None:
    interpreter = matrix.interpreter(python)
    row = Row("poetry", matrix.version_of(POETRY), python, project)
    with matrix.case(row):
        run_project(PoetryInstaller(matrix, python, interpreter, tmp_path), project, row)


@pytest.mark.parametrize(("python", "project"), other_cases(PDM_PYTHONS), ids=other_ids(PDM_PYTHONS))
def test_pdm(matrix: Matrix, python: str, project: Project, tmp_path: Path) -> None:
    interpreter = matrix.interpreter(python)
    row = Row("pdm", matrix.version_of(PDM), python, project)
    with matrix.case(row):
        run_project(PdmInstaller(matrix, python, interpreter, tmp_path), project, row)
