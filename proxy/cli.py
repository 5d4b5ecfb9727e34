"""The ``wheelfarm`` command line: read settings once, configure logging, run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from builder import cli as builder_cli
from proxy import __version__
from proxy.adminclient import cli as admin_cli
from proxy.logs import configure_logging
from proxy.provenance import cli as provenance_cli
from proxy.settings import SettingsError, example_config, fields, load_settings

# Short flags for the settings people set most; every setting also has --section-key.
_ALIASES = {
    "host": "--host",
    "port": "--port",
    "cache_dir": "--cache-dir",
    "upstream_url": "--upstream",
    "server_processes": "--processes",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wheelfarm", description="A caching proxy of the Python package index."
    )
    parser.add_argument("--version", action="version", version=f"wheelfarm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the proxy",
        description="Run the proxy. Every flag is also a [section] key of the --config file and a "
        "WHEELFARM_SECTION_KEY environment variable; flags win over both (see config.example.toml).",
    )
    serve.add_argument("--config", type=Path, help="TOML settings file (see config.example.toml)")
    for item in fields():
        names = [item.flag]
        if item.attr in _ALIASES:
            names.insert(0, _ALIASES[item.attr])
        shown = "" if item.default in (None, "", ()) else f" (default: {_shown(item.default)})"
        serve.add_argument(
            *names,
            dest=item.attr,
            default=None,
            metavar=item.kind.upper().replace(" ", "_")
            if not item.choices
            else "{" + ",".join(item.choices) + "}",
            help=f"{item.doc}{shown} [{item.section}] {item.key}, ${item.env}".replace("%", "%%"),
        )
    target = commands.add_parser(
        "target", help="this interpreter's target id, and the index URLs that give it the farm's wheels"
    )
    target.add_argument(
        "--url", default="http://127.0.0.1:8080", help="the proxy's address (default http://127.0.0.1:8080)"
    )
    config = commands.add_parser("config", help="settings: print config.example.toml")
    config.add_argument("config_command", choices=["example"], help="example: every setting, documented")
    db = commands.add_parser("db", help="the cluster's PostgreSQL ([cluster] database)")
    db.add_argument(
        "db_command",
        choices=["upgrade", "add-token", "revoke-token", "tokens", "unflag"],
        help="upgrade: apply the schema migrations it lacks; add-token NAME: a remote builder's token (shown "
        "once); revoke-token NAME; tokens: list them; unflag NAME: a builder flagged for a refused upload "
        "gets jobs again",
    )
    db.add_argument("name", nargs="?", help="the builder's name (add-token, revoke-token)")
    db.add_argument("--config", type=Path, help="TOML settings file naming [cluster] database")
    builder = commands.add_parser("builder", help="the wheel builder on its own")
    builder_cli.add_arguments(builder)
    admin_cli.add_commands(commands)
    provenance_cli.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "builder":
        configure_logging("info", "auto")
        return builder_cli.run(args)
    if args.command in admin_cli.COMMANDS:
        return admin_cli.run(args)
    if args.command in provenance_cli.COMMANDS:
        return provenance_cli.run(args)
    if args.command == "config":
        sys.stdout.write(example_config())
        return 0
    if args.command == "target":
        return _print_target(args.url.rstrip("/"))
    if args.command == "db":
        return _database_command(args.db_command, args.name, args.config)
    overrides = {item.attr: getattr(args, item.attr) for item in fields()}
    try:
        settings = load_settings(args.config, overrides=overrides)
    except SettingsError as exc:
        print(f"wheelfarm: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.logging_level, settings.logging_format)
    if args.command == "serve":
        from proxy.web.app import run

        structlog.get_logger("wheelfarm").info(
            "starting", version=__version__, host=settings.host, port=settings.port
        )
        import psycopg

        from proxy.redact import redact

        try:
            run(settings)
        except OSError as exc:  # one clear line for what the operator must fix, not a traceback
            print(f"wheelfarm: cannot start: {_startup_problem(exc, settings)}", file=sys.stderr)
            return 1
        except psycopg.Error as exc:  # the cluster's database: never with its password
            print(
                f"wheelfarm: cannot start: the cluster database: {redact(str(exc)).strip()}", file=sys.stderr
            )
            return 1
    return 0


def _database_command(command: str, name: str | None, config: Path | None) -> int:
    import asyncio

    import psycopg

    from proxy.cluster.admin import database_command
    from proxy.cluster.schema import SchemaTooNew
    from proxy.redact import redact

    try:
        url = load_settings(config).cluster_database
    except SettingsError as exc:
        print(f"wheelfarm: {exc}", file=sys.stderr)
        return 2
    if not url:
        print(
            "wheelfarm: no [cluster] database is configured (or WHEELFARM_CLUSTER_DATABASE)", file=sys.stderr
        )
        return 2
    if command in ("add-token", "revoke-token", "unflag") and not name:
        print(f"wheelfarm: db {command} needs the builder's name", file=sys.stderr)
        return 2
    try:
        code, output = asyncio.run(database_command(url, command, name or ""))
    except (psycopg.Error, SchemaTooNew) as exc:
        print(f"wheelfarm: cannot reach {redact(url)}: {redact(str(exc)).strip()}", file=sys.stderr)
        return 1
    print(output, file=sys.stdout if code == 0 else sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())


def _shown(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _startup_problem(exc: OSError, settings: object) -> str:
    import errno

    where = f": {exc.filename}" if exc.filename else ""
    if exc.errno == errno.EADDRINUSE:
        return (
            f"the address is already in use ({getattr(settings, 'host', '')}:{getattr(settings, 'port', '')})"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{exc.strerror}{where}"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {getattr(settings, 'host', '')}: {exc.strerror}"
    return f"{exc.strerror or exc}{where}"


def _print_target(url: str) -> int:
    """The running interpreter's target, then where each kind of client points (README, "Which client?")."""
    from builder.cli import host_target
    from builder.tags import InvalidTarget

    try:
        target = host_target(sys.version_info[:2])
    except InvalidTarget as exc:
        print(
            f"wheelfarm: no target for this machine ({exc}): the farm builds for Linux only", file=sys.stderr
        )
        return 1
    print(target.id)
    print(f"pip and uv (they send their target in the User-Agent): {url}/simple/")
    print(f"poetry, pdm and other clients: {url}/t/{target.id}/simple/")
    return 0
