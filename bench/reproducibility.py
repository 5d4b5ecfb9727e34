"""Reproduced share of real sdist-only releases: a fresh wheelfarm (second builds on) builds each release from
the live index, then builds it again at a quiet moment and compares (builder/reproduce.py); the table says,
per release, whether the wheel is pure or native, reproduced byte for byte or not, and what differed.

    .venv/bin/python bench/reproducibility.py [--target cp311-manylinux_2_36_x86_64] [--out FILE.md] [REQ...]

Each REQ is name==version. Nothing is installed: the script follows each page's build-pending link as pip
would (retrying while it answers 503), then waits for every verdict through the admin API. Then, as a user
would, it downloads every built wheel and runs ``wheelfarm verify --farm URL --rebuild`` on them: a third
build, by another process in another work folder with a fresh uv cache, pinned to the build requirements
each signed statement lists.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

import httpx  # noqa: E402
from fakes import FakeClock, ProxyServer, proxy_settings  # noqa: E402
from packaging.utils import canonicalize_name, parse_wheel_filename  # noqa: E402

from proxy.settings import Settings  # noqa: E402

PURE = [
    "docopt==0.6.2", "sgmllib3k==1.0.0", "jsmin==3.0.1", "pyinotify==0.9.6", "termcolor==1.1.0",
    "wget==3.2", "pyperclip==1.9.0", "antlr4-python3-runtime==4.9.3", "pathtools==0.1.2",
]  # fmt: skip
NATIVE = [
    "mmh3==2.5.1", "python-Levenshtein==0.12.2", "netifaces==0.11.0", "simplejson==3.17.2", "ujson==1.35",
    "MarkupSafe==1.1.1", "wrapt==1.12.1", "crcmod==1.7", "pyrsistent==0.16.0",
]  # fmt: skip
TOKEN = "bench-admin-token"
# A verify line: OK or FAIL, the wheel, and from the rebuild's part on ("rebuilt: ...", "rebuild failed ...").
_REBUILT = re.compile(r"(OK|FAIL) +(\S+): .*?((?:rebuilt|rebuild failed|cannot rebuild).*)$")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="cp311-manylinux_2_36_x86_64")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/reproducibility.md")
    parser.add_argument("requirements", nargs="*", default=PURE + NATIVE)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(scratch) / "cache"
        settings = proxy_settings(
            cache, Settings(cache_dir=cache).upstream_url, upstream_connect_timeout=20.0,
            upstream_read_timeout=60.0, builder_enabled=True, builder_timeout=600.0, builder_workers=2,
            builder_reproduce=True, admin_enabled=True, admin_token=TOKEN,
        )  # fmt: skip
        with ProxyServer(settings, FakeClock()) as proxy:
            started = time.monotonic()
            outcomes = {
                requirement: build(proxy, args.target, requirement) for requirement in args.requirements
            }
            records = verdicts(proxy, sum(1 for outcome in outcomes.values() if outcome == "built"))
            seconds = time.monotonic() - started
            started = time.monotonic()
            rebuilt = verify_rebuild(proxy, records, Path(scratch) / "wheels")
            rebuild_seconds = time.monotonic() - started
    table = report(args.requirements, outcomes, records, seconds, rebuilt, rebuild_seconds)
    args.out.write_text(table)
    print(table)


def build(proxy: ProxyServer, target: str, requirement: str) -> str:
    name, version = requirement.split("==")
    scope = f"{proxy.url}/t/{target}/simple/{canonicalize_name(name)}/"
    page = httpx.get(scope, headers={"Accept": "application/vnd.pypi.simple.v1+json"}, timeout=120)
    if page.status_code != 200:
        return f"page {page.status_code}"
    pending = [
        f for f in page.json()["files"]
        if f.get("_wheelfarm", {}).get("pending") and parse_wheel_filename(f["filename"])[1].public == version
    ]  # fmt: skip
    if not pending:
        return "no build link (a wheel upstream, or not offered)"
    url = str(httpx.URL(scope).join(pending[0]["url"]))
    while (response := httpx.get(url, timeout=700)).status_code == 503:
        time.sleep(1)
    print(requirement, response.status_code, flush=True)
    return "built" if response.status_code == 200 else f"failed: {response.text.splitlines()[0][:160]}"


def verdicts(proxy: ProxyServer, built: int, patience: float = 1800.0) -> list[dict[str, Any]]:
    """The finished builds, once every built wheel has its second build's verdict."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    deadline = time.monotonic() + patience
    while True:
        records = httpx.get(f"{proxy.url}/admin/api/builds", headers=headers, timeout=60).json()["finished"]
        done = [r for r in records if r["state"] == "done"]
        if len(done) >= built and all(r.get("reproduced") is not None for r in done):
            return records
        if time.monotonic() > deadline:
            return records
        time.sleep(2)


def verify_rebuild(proxy: ProxyServer, records: list[dict[str, Any]], folder: Path) -> dict[str, str]:
    """Each built wheel's line of ``wheelfarm verify --rebuild``, after its "rebuilt: " (by wheel name)."""
    folder.mkdir(parents=True, exist_ok=True)
    wheels = []
    for record in records:
        if record["state"] == "done":
            wheel = folder / record["wheel"]
            wheel.write_bytes(httpx.get(proxy.url + record["url"], timeout=120).content)
            wheels.append(str(wheel))
    ran = subprocess.run(
        [sys.executable, "-m", "proxy", "verify", "--farm", proxy.url, "--rebuild", *wheels],
        capture_output=True, text=True, timeout=3600, check=False,
    )  # fmt: skip
    lines = {}
    for line in ran.stdout.splitlines():
        found = re.match(
            r"(OK|FAIL) +(\S+): .*?((?:rebuilt|rebuild failed|cannot rebuild)[^;]*(?:;.*)?)$", line
        )
        if found:
            lines[found[2]] = found[3]
    return lines


def report(
    requirements: list[str],
    outcomes: dict[str, str],
    records: list[dict[str, Any]],
    seconds: float,
    rebuilt: dict[str, str],
    rebuild_seconds: float,
) -> str:
    by_project = {canonicalize_name(r["project"]): r for r in records if r["state"] == "done"}
    lines = [
        "# Reproducibility of real sdist-only releases",
        "",
        "`bench/reproducibility.py`: a fresh wheelfarm (2 build slots, `[builder] reproduce = true`) builds "
        "each release from the live index for cp311-manylinux_2_36_x86_64 on this 2-core Debian 12 machine, "
        f"then builds it again at a quiet moment and compares. {len(requirements)} releases, "
        f"{seconds:.0f} s. Then `wheelfarm verify --farm URL --rebuild` on every built wheel (another "
        f"process and work folder, a fresh uv cache, the signed build requirements pinned): "
        f"{rebuild_seconds:.0f} s.",
        "",
        "| release | wheel | farm's second build | what differed | verify --rebuild |",
        "| --- | --- | --- | --- | --- |",
    ]
    tally: dict[str, list[bool]] = {"pure": [], "native": []}
    identical: list[bool] = []
    for requirement in requirements:
        record = by_project.get(canonicalize_name(requirement.split("==")[0]))
        if record is None:
            lines.append(f"| {requirement} | - | not built: {outcomes[requirement]} | | |")
            continue
        kind = "pure" if record["wheel"].endswith("-none-any.whl") else "native"
        reproduced = record.get("reproduced")
        if reproduced is not None:
            tally[kind].append(bool(reproduced))
        verdict = {True: "reproduced", False: "not reproduced", None: "unchecked"}[reproduced]
        differing = ", ".join(f"`{name}`" for name in record.get("differing", [])[:6])
        note = record.get("reproduction_note", "")
        again = rebuilt.get(record["wheel"], "no line")
        if again.startswith("rebuilt: identical"):
            identical.append(True)
        elif again != "no line":
            identical.append(False)
        lines.append(
            f"| {requirement} | {kind} | {verdict} | {differing}{'; ' if differing and note else ''}{note} "
            f"| {again} |"
        )
    lines.append("")
    for kind, results in tally.items():
        share = f"{sum(results) / len(results):.0%}" if results else "-"
        lines.append(f"- {kind}: {sum(results)} of {len(results)} reproduced ({share})")
    every = tally["pure"] + tally["native"]
    lines.append(f"- all: {sum(every)} of {len(every)} reproduced")
    lines.append(f"- verify --rebuild: {sum(identical)} of {len(identical)} identical")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
