"""``wheelfarm status | cache ... | build ...``: the operator's command line over the admin JSON API.

A small HTTP client on the standard library's urllib (the installed package needs nothing more). Every
command takes ``--url`` (the admin base URL, or ``WHEELFARM_ADMIN_URL``), ``--token`` (or
``WHEELFARM_ADMIN_TOKEN``, the same variable ``wheelfarm serve`` reads its token from) and ``--json`` (the
server's JSON instead of text). Exit codes: 0 done, 1 a build failed (or waiting gave up) or ``cache verify``
found corrupt files, 2 a usage, HTTP or connection error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO
from urllib.parse import quote, urlsplit

from proxy.adminclient.http import DEFAULT_URL, TOKEN_ENV, URL_ENV, AdminClient, AdminError, ExitCode
from proxy.adminclient.text import (
    build_counts,
    build_outcome,
    build_row,
    human_bytes,
    human_seconds,
    human_time,
    printable,
    summary_lines,
    table,
    verify_lines,
    write_json,
)
from proxy.adminclient.watch import build_ahead

# --- commands ------------------------------------------------------------------------------------------

COMMANDS = ("status", "cache", "build")


def status(client: AdminClient, args: argparse.Namespace, out: TextIO) -> ExitCode:
    data = client.get("api/summary")
    if args.json:
        write_json(data, out)
    else:
        out.write(f"wheelfarm admin {client.base_url} (upstream {data.get('upstream')})\n")
        out.write("\n".join(summary_lines(data, full=args.command == "cache")) + "\n")
    return ExitCode.OK


def cache_show(client: AdminClient, args: argparse.Namespace, out: TextIO) -> ExitCode:
    data = client.get(f"api/projects/{quote(args.project, safe='')}")
    if args.json:
        write_json(data, out)
        return ExitCode.OK
    page = data["page"]
    out.write(f"{data['project']}: page fetched {human_time(page['fetched_at'])}, serial {page['serial']}, ")
    out.write(f"cache {page['cache']}, {page['files']} files\n")
    rows = [["cached" if f["cached"] else "-", human_bytes(f["bytes"]), f["filename"]] for f in data["files"]]
    out.write("\n".join(table(rows)) + "\n")
    for target, views in sorted(data["builds"].items()):
        out.write(f"builds for {target}\n")
        rows = [
            [
                v["state"],
                human_seconds(v["duration_seconds"]),
                v["sdist"],
                v["key"]["sdist_sha256"],
                build_outcome(v),
            ]
            for v in views
        ]
        out.write("\n".join(table(rows)) + "\n")
    return ExitCode.OK


def cache_purge(client: AdminClient, args: argparse.Namespace, out: TextIO) -> ExitCode:
    data = client.post(f"api/projects/{quote(args.project, safe='')}/purge", {"files": args.files})
    if args.json:
        write_json(data, out)
        return ExitCode.OK
    removed = data["removed"]
    page = "page forgotten" if removed["page"] else "no cached page"
    out.write(f"purged {data['project']}: {page}, {removed['files']} cached files and ")
    out.write(f"{removed['builds']} builds removed\n")
    return ExitCode.OK


def cache_evict(client: AdminClient, args: argparse.Namespace, out: TextIO) -> ExitCode:
    data = client.post("api/evict", {"unused_for_seconds": args.unused_for * 86400})
    if args.json:
        write_json(data, out)
    else:
        out.write(f"evicted {data['evicted_files']} files unused for {args.unused_for:g} days\n")
    return ExitCode.OK


def cache_verify(client: AdminClient, args: argparse.Namespace, out: TextIO) -> ExitCode:
    run = client.post("api/verify", {})["verify"]
    while not args.no_wait and run["state"] != "done":
        time.sleep(args.interval)
        run = client.get("api/verify")["verify"]
    if args.json:
        write_json(run, out)
    else:
        out.write("\n".join(verify_lines(run)) + "\n")
    return ExitCode.FAILED if run["corrupt"] else ExitCode.OK


def build_list(client: AdminClient, args: argparse.Namespace, out: TextIO) -> ExitCode:
    data = client.get("api/builds")
    if args.json:
        write_json(data, out)
        return ExitCode.OK
    out.write(build_counts(data["builds"]) + "\n")
    for title, views in (("active", data["active"]), ("finished", data["finished"])):
        if views:
            out.write(f"{title}\n" + "\n".join(table([build_row(v) for v in views])) + "\n")
    return ExitCode.OK


def build_retry(client: AdminClient, args: argparse.Namespace, out: TextIO) -> ExitCode:
    data = client.post(_key_path(args) + "/retry", {})
    if args.json:
        write_json(data, out)
    else:
        out.write(f"forgot the failed build of {data['sdist']} for {args.target}: {data['retry']}\n")
    return ExitCode.OK


def build_delete(client: AdminClient, args: argparse.Namespace, out: TextIO) -> ExitCode:
    data = client.delete(_key_path(args))
    if args.json:
        write_json(data, out)
    else:
        out.write(f"deleted the build of {args.sdist_sha256} for {args.target}\n")
    return ExitCode.OK


# --- the command line ---------------------------------------------------------------------------------

Handler = Callable[[AdminClient, argparse.Namespace, TextIO], ExitCode]


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``status``, ``cache ...`` and ``build ...`` under the ``wheelfarm`` command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"admin base URL (default: ${URL_ENV} or {DEFAULT_URL})")
    common.add_argument("--token", help=f"bearer token that admin changes need (default: ${TOKEN_ENV})")
    common.add_argument("--json", action="store_true", help="print the server's JSON instead of text")

    def leaf(group: Any, name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = group.add_parser(
            name, parents=[common], help=help, description=help
        )
        parser.set_defaults(admin_handler=handler)
        return parser

    leaf(commands, "status", status, "what the proxy holds: pages, files, built wheels, hit ratio, builds")
    cache = commands.add_parser("cache", help="inspect and trim the proxy's cache").add_subparsers(
        dest="cache_command", required=True
    )
    leaf(cache, "summary", status, "cached pages and files, built wheels, cache outcomes")
    show = leaf(cache, "show", cache_show, "one project: its page, which files are cached, its builds")
    show.add_argument("project")
    purge = leaf(
        cache, "purge", cache_purge, "forget a project's page (and with --files its files and builds)"
    )
    purge.add_argument("project")
    purge.add_argument("--files", action="store_true", help="also delete its cached files and built wheels")
    evict = leaf(cache, "evict", cache_evict, "delete cached files nobody downloaded for a while")
    evict.add_argument(
        "--unused-for", type=_amount, required=True, metavar="DAYS", help="days (e.g. 30 or 0.5)"
    )
    verify = leaf(
        cache,
        "verify",
        cache_verify,
        "rehash every cached file; corrupt ones are quarantined and fetched again (exit code 1 if any)",
    )
    verify.add_argument("--no-wait", action="store_true", help="start the run and return")
    verify.add_argument(
        "--interval", type=_amount, default=1.0, metavar="SECONDS", help="seconds between polls (default: 1)"
    )

    build = commands.add_parser("build", help="build wheels ahead of time; list, retry, delete builds")
    actions = build.add_subparsers(dest="build_command", required=True)
    ahead = leaf(
        actions, "ahead", build_ahead, "build the sdists of these requirements for a target, and wait"
    )
    ahead.add_argument("requirements", nargs="*", metavar="REQUIREMENT", help="e.g. numpy==2.1.0")
    ahead.add_argument(
        "-r",
        "--requirement",
        dest="requirement_files",
        action="append",
        metavar="FILE",
        help="a pip requirements file, hashes and all (- for stdin); may repeat",
    )
    ahead.add_argument("--target", required=True, help="e.g. cp312-manylinux_2_36_x86_64")
    ahead.add_argument("--no-wait", action="store_true", help="start the builds and return")
    ahead.add_argument(
        "--interval", type=_amount, default=1.0, metavar="SECONDS", help="seconds between polls (default: 1)"
    )
    ahead.add_argument(
        "--timeout",
        type=_amount,
        default=0.0,
        metavar="SECONDS",
        help="stop waiting after SECONDS (default: never)",
    )
    leaf(actions, "list", build_list, "running and finished builds")
    for name, handler, text in (
        ("retry", build_retry, "forget a failed build: the next request for its pending link builds again"),
        ("delete", build_delete, "delete a build record and its wheel"),
    ):
        parser = leaf(actions, name, handler, text)
        parser.add_argument("sdist_sha256", metavar="SDIST_SHA256")
        parser.add_argument("target", metavar="TARGET")


def _amount(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a number, 0 or more")
    return value


def _key_path(args: argparse.Namespace) -> str:
    return f"api/builds/{quote(args.sdist_sha256, safe='')}/{quote(args.target, safe='')}"


def _base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise AdminError(f"--url: {url!r} is not an http(s) URL like {DEFAULT_URL}")
    return url if url.endswith("/") else url + "/"


def run(args: argparse.Namespace, environ: Mapping[str, str] | None = None, out: TextIO | None = None) -> int:
    """Run one admin command; ``environ`` supplies the URL and token when no flag does."""
    env = os.environ if environ is None else environ
    stdout = sys.stdout if out is None else out
    try:
        client = AdminClient(
            _base_url(args.url or env.get(URL_ENV) or DEFAULT_URL), args.token or env.get(TOKEN_ENV, "")
        )
        handler: Handler = args.admin_handler
        return int(handler(client, args, stdout))
    except AdminError as exc:
        stdout.flush()
        print(f"wheelfarm: {printable(str(exc))}", file=sys.stderr)
        return int(ExitCode.ERROR)
    except KeyboardInterrupt:
        print("\nwheelfarm: stopped waiting; builds already started go on on the proxy", file=sys.stderr)
        return 130
