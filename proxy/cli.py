"""The ``wheelfarm`` command line: read settings once, configure logging, run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from builder import cli as builder_cli
from proxy import __version__, admin_cli
from proxy.logs import configure_logging
from proxy.settings import SettingsError, all_fields, flag_name, load_settings

# Short flags for the settings people set most; every setting also has --section-key.
_ALIASES = {
    "host": "--host",
    "port": "--port",
    "cache_dir": "--cache-dir",
    "upstream_url": "--upstream",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wheelfarm", description="A caching proxy of the Python package index."
    )
    parser.add_argument("--version", action="version", version=f"wheelfarm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", type=Path, help="TOML settings file (see config.example.toml)")
    for section, key, attr in all_fields():
        names = [flag_name(section, key)]
        if attr in _ALIASES:
            names.insert(0, _ALIASES[attr])
        serve.add_argument(*names, dest=attr, default=None, metavar=key.upper(), help=f"[{section}] {key}")
    builder = commands.add_parser("builder", help="the wheel builder on its own")
    builder_cli.add_arguments(builder)
    admin_cli.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "builder":
        configure_logging("info", "auto")
        return builder_cli.run(args)
    if args.command in admin_cli.COMMANDS:
        return admin_cli.run(args)
    overrides = {attr: getattr(args, attr) for _, _, attr in all_fields()}
    try:
        settings = load_settings(args.config, overrides=overrides)
    except SettingsError as exc:
        print(f"wheelfarm: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.logging_level, settings.logging_format)
    if args.command == "serve":
        from proxy.app import run

        structlog.get_logger("wheelfarm").info(
            "starting", version=__version__, host=settings.host, port=settings.port
        )
        run(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
