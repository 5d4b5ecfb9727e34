"""One build on its own, in this process, outside the proxy: what ``wheelfarm builder build`` and
``wheelfarm verify --rebuild`` both run. It is a pool worker's build (builder/runner.py: the same sandboxed
steps), in a build folder of its own that is removed when the caller is done with its outputs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import parse_sdist_filename

from builder.jobs import Limits, file_sha256
from builder.protocol import WorkerOrder, WorkerReport
from builder.runner import run_build
from builder.tags import Target
from builder.users import build_user
from builder.workdir import BuildFolder, new_build_folder, remove_build_folder

DEFAULT_BUILD_UID = 1_900_000_000  # as root, the sandbox runs as this uid and gid (never as root)


@dataclass(frozen=True)
class LocalBuild:
    """A finished local build: the worker's report, and its folder (the wheel in ``result/``, the log)."""

    report: WorkerReport
    folder: BuildFolder

    @property
    def wheel(self) -> Path:
        """The built wheel (only when ``report.ok``)."""
        return self.folder.result / self.report.wheel_filename


@contextmanager
def build_here(
    sdist: Path,
    *,
    target: Target,
    interpreter: Path,
    index_url: str,
    work_root: Path,
    limits: Limits,
    build_uid: int = DEFAULT_BUILD_UID,
    sdist_url: str = "",
    constraints: Sequence[str] = (),
) -> Iterator[LocalBuild]:
    """Build ``sdist`` (a verified local file; its name says project and version) for ``target`` in a new
    folder under ``work_root``, requirements from ``index_url`` within ``constraints``. The folder is
    removed on leaving the block, so copy out what should outlive it."""
    name, version = parse_sdist_filename(sdist.name)
    digest = file_sha256(sdist)
    folder = new_build_folder(work_root, digest, target.id)
    order = WorkerOrder(
        project=str(name),
        version=str(version),
        sdist_filename=sdist.name,
        sdist_sha256=digest,
        sdist_url=sdist_url or sdist.as_uri(),
        sdist_path=str(sdist),
        target=target.id,
        interpreter=str(interpreter),
        index_url=index_url,
        work_dir=str(folder.path),
        limits=limits,
        build_user=build_user(build_uid, 0),
        constraints=tuple(constraints),
    )
    try:
        yield LocalBuild(run_build(order), folder)
    finally:
        remove_build_folder(work_root, folder.path)
