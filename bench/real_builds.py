"""Real sdist-only releases from the live index, built by a fresh wheelfarm, one after the other: which
build, which fail and where, how long each took, and whether the first client of a failing release met
a hard error (a 422 after following a build-pending link) or was never offered a link, and for each
failure whether the client alone would have done better (``pip wheel --no-binary NAME`` of the same
release against the upstream, on this machine).

    .venv/bin/python bench/real_builds.py [--target cp311-manylinux_2_36_x86_64] [--out results.json] REQ...

Each REQ is name==version. Nothing is installed: the script plays the client, following the page's
build-pending link as pip would (retrying while it answers 503).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

import httpx  # noqa: E402
from fakes import FakeClock, ProxyServer, proxy_settings  # noqa: E402
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename  # noqa: E402

from builder.tags import Target  # noqa: E402
from proxy.settings import Settings  # noqa: E402

DEFAULT = [
    "docopt==0.6.2", "sgmllib3k==1.0.0", "jsmin==3.0.1", "pyinotify==0.9.6", "termcolor==1.1.0",
    "wget==3.2", "pyperclip==1.9.0", "antlr4-python3-runtime==4.9.3", "pathtools==0.1.2",
    "mmh3==2.5.1", "python-Levenshtein==0.12.2", "netifaces==0.11.0", "simplejson==3.17.2",
    "pycrypto==2.6.1", "psycopg2==2.9.9", "ujson==1.35", "PyYAML==5.4.1",
    "orjson==3.0.0", "orjson==3.1.0",
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="cp311-manylinux_2_36_x86_64")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("requirements", nargs="*", default=DEFAULT)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(scratch) / "cache"
        settings = proxy_settings(
            cache, Settings(cache_dir=cache).upstream_url, upstream_connect_timeout=20.0,
            upstream_read_timeout=60.0, builder_enabled=True, builder_timeout=600.0, builder_workers=1,
        )  # fmt: skip
        with ProxyServer(settings, FakeClock()) as proxy:
            for requirement in args.requirements:
                rows.append(one(proxy, args.target, requirement))
                print(json.dumps(rows[-1]), flush=True)
    built = sum(1 for r in rows if r["outcome"] == "built")
    failed = [r for r in rows if r["outcome"] == "failed"]
    unoffered = [r for r in rows if r["outcome"] == "not offered"]
    avoidable = [r for r in failed if r.get("client alone") == "built"]
    summary = {
        "releases": len(rows),
        "built": built,
        "failed (first client got a 422)": len(failed),
        "of those, pip alone built it": len(avoidable),
        "not offered (no link, no hard error)": len(unoffered),
        "other": len(rows) - built - len(failed) - len(unoffered),
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))


def one(proxy: ProxyServer, target: str, requirement: str) -> dict[str, object]:
    name, version = requirement.split("==")
    scope = f"{proxy.url}/t/{target}/simple/{canonicalize_name(name)}/"
    row: dict[str, object] = {"release": requirement}
    page = httpx.get(scope, headers={"Accept": "application/vnd.pypi.simple.v1+json"}, timeout=120)
    if page.status_code != 200:
        return {**row, "outcome": f"page {page.status_code}"}
    files = page.json()["files"]
    wheels = [f for f in files if f["filename"].endswith(".whl") and _version(f["filename"]) == version]
    sdists = [f for f in files if not f["filename"].endswith(".whl") and _version(f["filename"]) == version]
    pending = [f for f in wheels if f.get("_wheelfarm", {}).get("pending")]
    supported = Target.parse(target)
    upstream = [f for f in wheels if "_wheelfarm" not in f]
    upstream_wheels = [f for f in upstream if supported.supports(parse_wheel_filename(f["filename"])[3])]
    row["sdist"] = sdists[0]["filename"] if sdists else None
    if not pending:
        outcome = "has a wheel upstream" if upstream_wheels else "not offered"
        return {**row, "outcome": outcome}
    url = str(httpx.URL(scope).join(pending[0]["url"]))
    started = time.monotonic()
    while True:
        response = httpx.get(url, timeout=700)
        if response.status_code != 503:
            break
        time.sleep(1)
    row["seconds"] = round(time.monotonic() - started, 1)
    if response.status_code == 200:
        disposition = response.headers.get("Content-Disposition", "")
        return {**row, "outcome": "built", "wheel": disposition.split("filename=")[-1].strip('"')}
    text = response.text.splitlines()[0] if response.text else ""
    phase = text.removeprefix("wheel build failed in ").split(":", 1)[0] if text.startswith("wheel") else ""
    row.update(outcome="failed", status=response.status_code, phase=phase, error=text[:300])
    return {**row, "client alone": client_alone(requirement)}


def client_alone(requirement: str) -> str:
    """Whether pip, building the same sdist itself from the upstream, gets a wheel here."""
    env = {
        "PATH": os.environ["PATH"], "HOME": tempfile.gettempdir(), "PIP_CONFIG_FILE": os.devnull,
        "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        name = requirement.split("==")[0]  # only this release from source; its build backends as wheels
        argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-binary", name]
        argv += ["--no-cache-dir", "-w", out, requirement]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    return "built" if done.returncode == 0 else "failed too"


def _version(filename: str) -> str:
    try:
        if filename.endswith(".whl"):
            return str(parse_wheel_filename(filename)[1])
        return str(parse_sdist_filename(filename)[1])
    except ValueError:
        return ""


if __name__ == "__main__":
    main()
