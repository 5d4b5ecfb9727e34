"""``wheelfarm verify`` (check farm-built wheels' provenance) and ``wheelfarm keys`` (the farm's signing keys:
show them, rotate)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import urllib.error
from pathlib import Path

from proxy.provenance.keys import FarmKeys, UnusableKey
from proxy.provenance.rebuild import rebuilt_verdict
from proxy.provenance.verify import (
    Farm,
    Verdict,
    Wheel,
    check,
    check_installed,
    envelope_for,
    farm_reproduced,
    installed_in,
    parse_keys,
    wheels_in,
)

COMMANDS = ("verify", "keys")


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    verify = commands.add_parser(
        "verify",
        help="check the signed provenance of farm-built wheels (wheels, pip reports, uv.lock, pylock.toml)",
    )
    verify.add_argument(
        "items",
        nargs="+",
        type=Path,
        help="wheels, pip --report JSON, uv.lock, pylock.toml, site-packages folders, virtual environments",
    )
    verify.add_argument("--farm", help="the farm's URL: its keys, attestations and upstream's sdists")
    verify.add_argument(
        "--keys", type=Path, help="the farm's keys.json, pinned (air-gapped sites); else fetched from --farm"
    )
    verify.add_argument(
        "--offline",
        action="store_true",
        help="ask the farm nothing: attestations beside the wheels, pinned keys",
    )
    verify.add_argument(
        "--rebuild",
        action="store_true",
        help="also build each verified wheel's sdist again here, in the farm's sandbox, with the build "
        "requirements the statement lists (from --farm's plain index), and compare the bytes",
    )
    verify.add_argument(
        "--require-reproduced",
        action="store_true",
        help="fail a wheel whose signed statement does not say the farm's second build made the same bytes",
    )
    keys = commands.add_parser("keys", help="the farm's signing keys in the cache: show them, or rotate")
    keys.add_argument("keys_command", choices=["show", "rotate"])
    keys.add_argument("--cache-dir", type=Path, required=True, help="the farm's [cache] dir")


def run(args: argparse.Namespace) -> int:
    if args.command == "keys":
        return _keys(args.keys_command, args.cache_dir / "private" / "signing")
    return _verify(args.items, args.farm, args.keys, args.offline, args.rebuild, args.require_reproduced)


def _keys(command: str, folder: Path) -> int:
    try:
        keys = FarmKeys.rotate(folder) if command == "rotate" else FarmKeys.load(folder)
    except (OSError, UnusableKey) as exc:
        print(f"wheelfarm keys: {exc}", file=sys.stderr)
        return 1
    for known in keys.known:
        state = "current" if known.key.keyid == keys.keyid else ("retired" if known.retired else "other")
        print(f"{known.key.keyid}  {known.key.keytype:8}  {state}")
    if command == "rotate":
        print("restart the farm's processes to sign with the new key", file=sys.stderr)
    return 0


def _verify(
    items: list[Path],
    farm_url: str | None,
    keys_file: Path | None,
    offline: bool,
    rebuild: bool,
    require_reproduced: bool = False,
) -> int:
    if rebuild and (offline or farm_url is None):
        print(
            "wheelfarm verify: --rebuild takes the build requirements from the farm's plain index: "
            "name the farm (--farm URL), not --offline",
            file=sys.stderr,
        )
        return 2
    if offline and keys_file is None:
        print("wheelfarm verify: --offline needs the farm's keys pinned: --keys keys.json", file=sys.stderr)
        return 2
    if farm_url is None and not offline:
        print("wheelfarm verify: name the farm (--farm URL), or --offline with --keys", file=sys.stderr)
        return 2
    farm = Farm(farm_url) if farm_url is not None and not offline else None
    try:
        keys = parse_keys(keys_file.read_bytes()) if keys_file is not None else farm.keys() if farm else []
        environments = [item for item in items if item.is_dir()]
        wheels = [wheel for item in items if not item.is_dir() for wheel in wheels_in(item)]
        for environment in environments:
            installed_in(environment)  # a folder that is no environment: said now, as bad usage
    except (OSError, ValueError, KeyError, urllib.error.URLError) as exc:
        print(f"wheelfarm verify: {exc}", file=sys.stderr)
        return 2
    failed = checked = 0
    for environment in environments:
        if farm is None:
            print(f"FAIL {environment}: an installed environment is checked against the farm (not --offline)")
            failed += 1
            continue
        for dist in installed_in(environment):
            try:
                verdict = check_installed(dist, farm, keys)
            except (OSError, ValueError, KeyError, urllib.error.URLError) as exc:
                verdict = Verdict(Wheel(dist.name, "", str(dist.site)), False, f"cannot check it: {exc}")
            if verdict is None:
                continue  # the farm did not build it
            checked += 1
            failed += not _concluded(verdict, farm if rebuild else None, require_reproduced)
    for wheel in wheels:
        if wheel.local is None and not (farm.serves(wheel.url) if farm else "/built/" in wheel.url):
            continue  # a lock's wheel from elsewhere: not the farm's to vouch for
        if wheel.local is None and farm is None:
            verdict = Verdict(wheel, False, "offline: a locked wheel's attestation is the farm's to give")
        else:
            try:
                verdict = check(wheel, envelope_for(wheel, farm), keys, farm)
            except (OSError, urllib.error.URLError) as exc:
                verdict = Verdict(wheel, False, f"cannot ask the farm: {exc}")
        checked += 1
        failed += not _concluded(verdict, farm if rebuild else None, require_reproduced)
    print(f"{checked} farm-built wheel(s) checked, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


def _concluded(verdict: Verdict, rebuild_with: Farm | None, require_reproduced: bool) -> bool:
    """Add what --rebuild (with the farm's index) and --require-reproduced ask to a wheel's verdict, print
    its line, and say whether it passed. A verdict that failed already stays as it is."""
    if rebuild_with is not None:
        verdict = rebuilt_verdict(verdict, rebuild_with)
    if require_reproduced:
        verdict = _reproduced_or_failed(verdict)
    print(f"{'OK  ' if verdict.ok else 'FAIL'} {verdict.wheel.filename}: {verdict.message}")
    return verdict.ok


def _reproduced_or_failed(verdict: Verdict) -> Verdict:
    """--require-reproduced: a verified wheel fails unless its signed statement says it was reproduced."""
    if not verdict.ok or verdict.statement is None or farm_reproduced(verdict.statement):
        return verdict
    return dataclasses.replace(verdict, ok=False, message=f"{verdict.message} (--require-reproduced)")
