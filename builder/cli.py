"""``wheelfarm builder build SDIST``: one build on its own, outside the proxy (debugging, trying a target).

It runs exactly what a pool worker runs (the same sandboxed steps), in this process, and leaves the wheel,
its metadata, the build log and the provenance record in the output folder.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
from pathlib import Path

import orjson
from packaging.utils import InvalidSdistFilename, parse_sdist_filename

from builder.interpreters import find_interpreter
from builder.jobs import Limits
from builder.local import DEFAULT_BUILD_UID, build_here
from builder.tags import InvalidTarget, Target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="builder_command", required=True)
    build = actions.add_parser("build", help="build one sdist into a wheel, in the sandbox")
    build.add_argument("sdist", type=Path, help="the sdist file (.tar.gz or .zip)")
    build.add_argument(
        "--index-url", required=True, help="index for build requirements (e.g. a proxy's /plain/simple/)"
    )
    build.add_argument(
        "--target", help="target id, e.g. cp312-manylinux_2_36_x86_64 (default: this host, Python 3.11)"
    )
    build.add_argument("--python", help="interpreter to build with (default: found for the target's version)")
    build.add_argument(
        "--out", type=Path, default=Path("wheelhouse"), help="output folder (default: ./wheelhouse)"
    )
    build.add_argument("--timeout", type=float, default=900.0, help="seconds per sandboxed step")
    build.add_argument(
        "--build-uid",
        type=int,
        default=DEFAULT_BUILD_UID,
        help="when run as root, the uid and gid the sandbox runs as (default 1900000000)",
    )
    add_run_arguments(actions)


def add_run_arguments(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = actions.add_parser(
        "run",
        help="pull jobs from a farm over HTTP and build them here (a remote builder)",
        description="The token comes from $WHEELFARM_BUILDER_TOKEN or --token-file (an argument would be "
        "visible to every user of this host in the process list).",
    )
    run.add_argument("--farm", required=True, help="the farm's URL, e.g. https://wheelfarm.example:8080")
    run.add_argument(
        "--token-file", type=Path, help="file holding the builder token (wheelfarm db add-token)"
    )
    run.add_argument(
        "--work-dir", type=Path, default=Path("/var/tmp/wheelfarm-builder"), help="build folders"
    )
    run.add_argument("--workers", type=int, default=2, help="builds at once (default 2)")
    run.add_argument("--targets", nargs="*", default=["*"], help="fnmatch patterns of the targets offered")
    run.add_argument(
        "--build-uid", type=int, default=DEFAULT_BUILD_UID, help="as root: slot N builds as this + N"
    )
    run.add_argument("--timeout", type=float, default=900.0, help="seconds per sandboxed step")
    run.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="VERSION=PATH",
        help="an interpreter to build with, e.g. 3.12=/opt/py312/bin/python3.12 (tried first; repeatable)",
    )


def run_remote_builder(args: argparse.Namespace) -> int:
    import os

    from builder.host import HostSettings
    from builder.remote import run_remote

    token = os.environ.get("WHEELFARM_BUILDER_TOKEN", "")
    if args.token_file is not None:
        token = args.token_file.read_text().strip()
    if not token:
        print("wheelfarm builder run: no token ($WHEELFARM_BUILDER_TOKEN or --token-file)", file=sys.stderr)
        return 2
    farm = args.farm.rstrip("/")
    settings = HostSettings(
        work_root=args.work_dir.resolve(),
        index_url=f"{farm}/plain/simple/",
        workers=max(1, args.workers),
        limits=Limits(timeout_seconds=args.timeout),
        build_uid=args.build_uid,
        interpreters=dict(item.split("=", 1) for item in args.python if "=" in item),
        targets=tuple(args.targets),
    )
    return run_remote(farm, token, settings)


def host_target(python: tuple[int, int]) -> Target:
    """This machine's target for CPython ``python``: its most specific platform tag (packaging.tags reads
    glibc's or musl's version), e.g. cp311-manylinux_2_36_x86_64."""
    from packaging.tags import platform_tags

    for tag in platform_tags():
        if tag.startswith(("manylinux_", "musllinux_")):
            return Target(python, tag)
    raise InvalidTarget(f"{platform.system()} {platform.machine()}")


def run(args: argparse.Namespace) -> int:
    if args.builder_command == "run":
        return run_remote_builder(args)
    sdist: Path = args.sdist.resolve()
    try:
        parse_sdist_filename(sdist.name)
        target = Target.parse(args.target) if args.target else host_target(sys.version_info[:2])
    except (InvalidSdistFilename, InvalidTarget) as exc:
        print(f"wheelfarm builder: {exc}", file=sys.stderr)
        return 2
    interpreter = Path(args.python) if args.python else find_interpreter(target.python_version)
    if interpreter is None:
        print(f"wheelfarm builder: no Python {target.python_version} found (use --python)", file=sys.stderr)
        return 2
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work_root = out / ".work"
    try:
        with build_here(
            sdist,
            target=target,
            interpreter=interpreter,
            index_url=args.index_url,
            work_root=work_root,
            limits=Limits(timeout_seconds=args.timeout),
            build_uid=args.build_uid,
        ) as build:
            result = build.report
            shutil.copyfile(build.folder.log, out / f"{sdist.name}.build.log")
            if result.ok:
                for path in (build.wheel, build.wheel.with_name(build.wheel.name + ".metadata")):
                    shutil.copyfile(path, out / path.name)
                (out / f"{result.wheel_filename}.provenance.json").write_bytes(
                    orjson.dumps(result.provenance, option=orjson.OPT_INDENT_2)
                )
    finally:
        shutil.rmtree(work_root, ignore_errors=True)
    summary = {"ok": result.ok, "wheel": result.wheel_filename, "sha256": result.wheel_sha256}
    if not result.ok:
        summary = {"ok": False, "phase": result.phase, "error": result.error}
    print(orjson.dumps(summary).decode())
    return 0 if result.ok else 1
