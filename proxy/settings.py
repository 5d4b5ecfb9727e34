"""All configuration in one frozen object, each setting described once.

Layers, later ones winning: defaults, a TOML file, WHEELFARM_* environment variables, command-line flags.
Every setting is declared once below (section, key, type, default, description); its TOML name
``[section] key``, environment variable ``WHEELFARM_SECTION_KEY``, flag ``--section-key``, the flag's
help and the whole of ``config.example.toml`` (``wheelfarm config example``) are derived from that one
declaration. This is the only module that reads the environment; an unknown WHEELFARM_* variable is an
error that names the closest real one.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Variables of the WHEELFARM_ family that are not settings of the server.
OTHER_VARIABLES = (
    "WHEELFARM_ADMIN_URL",  # the operator's command line: which proxy to talk to
    "WHEELFARM_SKIP_LIVE",  # the test suite: skip tests that talk to the real index
)


class SettingsError(ValueError):
    """A setting that cannot be used; the message names it and where it came from."""


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "wheelfarm"


# --- conversions: raw TOML / environment / flag value -> typed value (ValueError when it does not fit) ---


def _boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError


def _integer(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError
    return int(raw)


def _number(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError
    return float(raw)


def _text(raw: Any) -> str:
    if not isinstance(raw, str | int | float) or isinstance(raw, bool):
        raise ValueError
    return str(raw)


def _path(raw: Any) -> Path:
    if not isinstance(raw, str) or not raw:
        raise ValueError
    return Path(raw).expanduser()


def _optional_path(raw: Any) -> Path | None:
    if not isinstance(raw, str):
        raise ValueError
    return Path(raw).expanduser() if raw else None


def _strings(raw: Any) -> tuple[str, ...]:
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValueError
    return tuple(i.strip() for i in items if i.strip())


_KINDS: dict[Callable[[Any], Any], str] = {
    _boolean: "boolean",
    _integer: "integer",
    _number: "number",
    _text: "string",
    _path: "path",
    _optional_path: "path",
    _strings: "list of strings",
}


def setting(
    section: str,
    key: str,
    default: Any,
    doc: str,
    *,
    parse: Callable[[Any], Any],
    choices: tuple[str, ...] = (),
    example: Any = None,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """Declare one setting: a dataclass field that carries its names, type and description."""
    metadata = {
        "section": section,
        "key": key,
        "doc": doc,
        "parse": parse,
        "choices": choices,
        "example": example,
    }
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = setting(
        "server", "host", "127.0.0.1",
        "Address to listen on. The default is loopback only; use \"0.0.0.0\" to serve a CI network.",
        parse=_text,
    )  # fmt: skip
    port: int = setting("server", "port", 8080, "TCP port to listen on.", parse=_integer)
    server_header_timeout: float = setting(
        "server", "header_timeout", 10.0,
        "Seconds a client has to send a request's headers, from the connection's start or the first byte "
        "of the request; a slower one gets 408 and is disconnected (it holds a file descriptor meanwhile).",
        parse=_number,
    )  # fmt: skip
    server_idle_timeout: float = setting(
        "server", "idle_timeout", 30.0,
        "Seconds a kept-alive connection may stay idle between requests before it is closed.",
        parse=_number,
    )  # fmt: skip
    server_max_connections: int = setting(
        "server", "max_connections", 4096,
        "Most client connections open at once (all listeners). At the limit the longest-idle connection "
        "is closed for a new one; when every one is busy the new one gets 503 at once. Lowered at start "
        "to what the open-files limit allows (two descriptors a connection, a reserve for the cache).",
        parse=_integer,
    )  # fmt: skip
    server_processes: int = setting(
        "server", "processes", 1,
        "Serving processes on this host, all on one port (SO_REUSEPORT: the kernel spreads connections). "
        "They share the cache folder; with more than one, builds need [cluster] database (then the first "
        "process runs this host's builder) or [builder] enabled = false.",
        parse=_integer,
    )  # fmt: skip
    upstream_url: str = setting(
        "upstream", "url", "https://pypi.org/simple/",
        "The upstream simple API (PEP 503/691). Pages are fetched as PEP 691 JSON, HTML only from an index "
        "that serves nothing else.",
        parse=_text,
    )  # fmt: skip
    upstream_connect_timeout: float = setting(
        "upstream", "connect_timeout", 10.0, "Seconds to open a connection to upstream.", parse=_number
    )
    upstream_read_timeout: float = setting(
        "upstream", "read_timeout", 30.0,
        "The most seconds between two reads of an upstream response (also the deadline of a whole page "
        "fetch). A file download may take as long as it needs while bytes keep coming.",
        parse=_number,
    )  # fmt: skip
    upstream_max_connections: int = setting(
        "upstream", "max_connections", 32, "Most connections open to upstream at once.", parse=_integer
    )
    upstream_file_hosts: tuple[str, ...] = setting(
        "upstream", "file_hosts", ("files.pythonhosted.org",),
        "Hosts (or \"*.domain\") files may come from besides the upstream's own host: a page pointing "
        "anywhere else is refused (no server-side request forgery through a hostile page).",
        parse=_strings,
    )  # fmt: skip
    upstream_allow_private_networks: bool = setting(
        "upstream", "allow_private_networks", False,
        "Allow file hosts that resolve to loopback, link-local or private addresses (an internal mirror). "
        "The configured upstream itself may be anywhere.",
        parse=_boolean,
    )  # fmt: skip
    upstream_max_page_mb: int = setting(
        "upstream", "max_page_mb", 64,
        "Largest project page accepted from upstream, in megabytes, compressed and decompressed alike "
        "(PyPI's largest are a few megabytes); a bigger one is refused with 502 and the cached copy served.",
        parse=_integer,
    )  # fmt: skip
    upstream_max_root_mb: int = setting(
        "upstream", "max_root_mb", 1024,
        "Largest root project list (/simple/) accepted, in megabytes (PyPI's is about 40 MB in JSON).",
        parse=_integer,
    )  # fmt: skip
    upstream_ca_bundle: Path | None = setting(
        "upstream", "ca_bundle", None,
        "Extra CA certificates (PEM) trusted for upstream, for corporate TLS interception. The system "
        "trust store is always used; \"\" means no extra bundle.",
        parse=_optional_path,
    )  # fmt: skip
    cache_dir: Path = setting(
        "cache", "dir", None,
        "Where pages, files, built wheels and build work folders are kept. Default: "
        "$XDG_CACHE_HOME/wheelfarm or ~/.cache/wheelfarm.",
        parse=_path, factory=_default_cache_dir, example=Path("/var/cache/wheelfarm"),
    )  # fmt: skip
    cache_files_dir: Path | None = setting(
        "cache", "files_dir", None,
        "Where downloaded files are kept; unset: <dir>/files. Hosts of a cluster may share one folder on a "
        "network mount, so the cluster downloads each file once (the download lock is a flock, which the "
        "Linux NFS client sends to the server as an NFSv4 lock: nfs(5), local_lock). Pages stay per host.",
        parse=_optional_path,
        example="/srv/wheelfarm-shared/files",
    )  # fmt: skip
    cache_page_ttl: float = setting(
        "cache", "page_ttl", 600.0,
        "Seconds a project page is served without asking upstream; then it is revalidated (If-None-Match).",
        parse=_number,
    )  # fmt: skip
    cache_root_ttl: float = setting(
        "cache", "root_ttl", 3600.0,
        "Seconds the root project list (/simple/, tens of MB) is served before it is fetched again.",
        parse=_number,
    )  # fmt: skip
    cache_not_found_ttl: float = setting(
        "cache", "not_found_ttl", 60.0,
        "Seconds an upstream 404 is remembered: of a project, and of a file its page does not list (a "
        "request for one revalidates the page at most this often, which finds a file uploaded since).",
        parse=_number,
    )  # fmt: skip
    cache_revalidate_wait: float = setting(
        "cache", "revalidate_wait", 3.0,
        "Seconds a client waits for the revalidation of a page past its TTL before it gets the cached page "
        "at once (marked stale) while the revalidation goes on: pip gives up after 15 s.",
        parse=_number,
    )  # fmt: skip
    cache_pages_in_memory: int = setting(
        "cache", "pages_in_memory", 2048,
        "Project pages kept parsed in memory, the most recently used; others are read from disk when asked.",
        parse=_integer,
    )  # fmt: skip
    cache_rendered_in_memory: int = setting(
        "cache", "rendered_in_memory", 4096,
        "Rendered page bodies (per project, format and target) kept in memory, the most recently used.",
        parse=_integer,
    )  # fmt: skip
    cache_failures_in_memory: int = setting(
        "cache", "failures_in_memory", 10_000,
        "Project names whose last upstream fetch failed, remembered (the newest), so a dead upstream costs "
        "one timeout per name and interval; the names are the clients' to choose, so this is bounded.",
        parse=_integer,
    )  # fmt: skip
    cache_files_without_hash: str = setting(
        "cache", "files_without_hash", "stream",
        "A file upstream lists without a sha256 cannot be verified: \"stream\" passes it through and keeps "
        "nothing; \"cache\" keeps it, under its URL.",
        parse=_text, choices=("stream", "cache"),
    )  # fmt: skip
    cache_stale_if_error: float = setting(
        "cache", "stale_if_error", 7 * 24 * 3600.0,
        "When upstream fails or times out, a cached page up to this many seconds old is served instead "
        "(stale-if-error, marked with the X-Wheelfarm-Cache: stale response header).",
        parse=_number,
    )  # fmt: skip
    cache_max_file_mb: int = setting(
        "cache", "max_file_mb", 0,
        "Most megabytes of files (wheels, sdists, metadata) kept; past it the least recently used files "
        "are evicted (never one being served or built from). 0: no limit.",
        parse=_integer,
    )  # fmt: skip
    cache_max_page_mb: int = setting(
        "cache", "max_page_mb", 1024,
        "Most megabytes of cached pages (SQLite index plus bodies); the least recently read go first.",
        parse=_integer,
    )  # fmt: skip
    cache_min_free_mb: int = setting(
        "cache", "min_free_mb", 64,
        "A file download that would leave less than this many megabytes free on the cache disk is refused "
        "before its first byte (HTTP 507), so pages and the page index keep room to be written.",
        parse=_integer,
    )  # fmt: skip
    cache_scrub_mb_per_minute: int = setting(
        "cache", "scrub_mb_per_minute", 256,
        "The background scrub rehashes cached files against their sha256, at most this many megabytes a "
        "minute (a whole pass at most once an hour); a file that no longer matches is quarantined and "
        "fetched again on its next request. 0: no scrub (first hits after a start are still checked).",
        parse=_integer,
    )  # fmt: skip
    logging_level: str = setting(
        "logging",
        "level",
        "info",
        "How much to log.",
        parse=_text,
        choices=("debug", "info", "warning", "error"),
    )
    logging_format: str = setting(
        "logging", "format", "auto", "JSON lines, readable lines, or JSON unless stderr is a terminal.",
        parse=_text, choices=("auto", "json", "console"),
    )  # fmt: skip
    builder_enabled: bool = setting(
        "builder", "enabled", True,
        "Offer and build wheels a release lacks for the requesting client (pip/uv User-Agent, or "
        "/t/<target>/).",
        parse=_boolean,
    )  # fmt: skip
    builder_workers: int = setting(
        "builder",
        "workers",
        2,
        "Builds at once (each in its own worker process and sandbox).",
        parse=_integer,
    )
    builder_hold_seconds: float = setting(
        "builder", "hold_seconds", 12.0,
        "Seconds a client following a build-pending link is held while the build runs (keep it under "
        "pip's 15 s read timeout); after that it gets 503 with Retry-After.",
        parse=_number,
    )  # fmt: skip
    builder_uv_hold_seconds: float = setting(
        "builder", "uv_hold_seconds", 25.0,
        "The same for uv, whose read timeout is 30 s (UV_HTTP_TIMEOUT).",
        parse=_number,
    )  # fmt: skip
    builder_retry_after: int = setting(
        "builder", "retry_after", 5,
        "The shortest Retry-After, in seconds, of a 503 for a build still running; it grows with the "
        "build's age so that pip's default retries last max_wait (README, \"Long builds\").",
        parse=_integer,
    )  # fmt: skip
    builder_max_wait: float = setting(
        "builder", "max_wait", 900.0,
        "Seconds a client is kept waiting for a build (held, then asked to come back); past it clients are "
        "told to try later while the build goes on.",
        parse=_number,
    )  # fmt: skip
    builder_sandbox: str = setting(
        "builder", "sandbox", "required",
        "Builds always run inside bubblewrap (no network, read-only system, seccomp, limits: README, \"How "
        "a build runs\"); where the sandbox cannot work nothing is built and /healthz says why. "
        "\"required\" is the only value.",
        parse=_text, choices=("required",),
    )  # fmt: skip
    builder_timeout: float = setting(
        "builder", "timeout", 900.0, "Seconds each sandboxed step of a build may take.", parse=_number
    )
    builder_memory_mb: int = setting(
        "builder", "memory_mb", 4096, "Address space of each build process, in megabytes.", parse=_integer
    )
    builder_processes: int = setting(
        "builder", "processes", 512, "Processes (and threads) a build may run at once.", parse=_integer
    )
    builder_max_file_mb: int = setting(
        "builder", "max_file_mb", 1024, "Largest single file a build may write, in megabytes.", parse=_integer
    )
    builder_max_output_mb: int = setting(
        "builder", "max_output_mb", 4096,
        "Everything a build holds on disk, in megabytes (also the largest wheel kept).",
        parse=_integer,
    )  # fmt: skip
    builder_max_files: int = setting(
        "builder", "max_files", 500_000,
        "Files and folders a build may hold at once (each costs an inode of the work folder's disk).",
        parse=_integer,
    )  # fmt: skip
    builder_min_free_mb: int = setting(
        "builder", "min_free_mb", 1024,
        "Builds are stopped (and tried again later) when the disk of the work folder has less free space "
        "than this, in megabytes: the wall for bytes a build hides where no count can see them.",
        parse=_integer,
    )  # fmt: skip
    builder_max_metadata_kb: int = setting(
        "builder", "max_metadata_kb", 8192,
        "Largest METADATA of a built wheel (served as its PEP 658 .metadata), in kilobytes.",
        parse=_integer,
    )  # fmt: skip
    builder_build_uid: int = setting(
        "builder", "build_uid", 1_900_000_000,
        "When the proxy runs as root, builds never do: build slot N runs as uid and gid build_uid + N, "
        "which must belong to no user (no /etc/passwd entry is needed). As any other user, builds run as "
        "that user inside a user namespace.",
        parse=_integer,
    )  # fmt: skip
    builder_bwrap: str = setting(
        "builder", "bwrap", "",
        "The bubblewrap binary; \"\" finds bwrap in /usr/bin, /bin, /usr/local/bin or on PATH.",
        parse=_text,
    )  # fmt: skip
    builder_work_dir: Path | None = setting(
        "builder", "work_dir", None, "Where builds run (a fast local disk). Default: <cache dir>/work.",
        parse=_optional_path, example=Path("/var/tmp/wheelfarm"),
    )  # fmt: skip
    builder_index_url: str = setting(
        "builder", "index_url", "",
        "The index builders install build requirements from: this proxy's /plain/simple/ (no overlay, so "
        "a build never waits on another build). Default: derived from [server] host and port.",
        parse=_text,
    )  # fmt: skip
    builder_interpreters: tuple[str, ...] = setting(
        "builder", "interpreters", (),
        "Interpreters per Python version, when not found under pyenv or as python3.X on PATH.",
        parse=_strings, example=("3.12=/opt/python/3.12/bin/python3.12",),
    )  # fmt: skip
    builder_targets: tuple[str, ...] = setting(
        "builder", "targets", ("*",),
        "Which targets this pool builds for (shell-style patterns on target ids).",
        parse=_strings, example=("cp311-manylinux_*", "cp312-manylinux_*"),
    )  # fmt: skip
    builder_allow: tuple[str, ...] = setting(
        "builder",
        "allow",
        ("*",),
        "Which projects it may build (patterns on normalised names).",
        parse=_strings,
    )
    builder_deny: tuple[str, ...] = setting(
        "builder", "deny", (), "Projects never built, whatever allow says.", parse=_strings
    )
    builder_orphan_retention: float = setting(
        "builder", "orphan_retention", 7 * 24 * 3600.0,
        "Seconds a built wheel whose sdist upstream no longer lists is kept on disk (never listed again; "
        "the admin view shows it as orphaned) before it is deleted.",
        parse=_number,
    )  # fmt: skip
    builder_max_builds: int = setting(
        "builder", "max_builds", 10_000,
        "Most build records (built wheels and remembered failures) kept; past it orphans go first, then the "
        "oldest. 0: no limit.",
        parse=_integer,
    )  # fmt: skip
    builder_reproduce: bool = setting(
        "builder", "reproduce", True,
        "Build each built wheel a second time, at a quiet moment (nothing else queued or building), in a "
        "fresh work folder, and record in its signed provenance whether the bytes came out the same (and if "
        "not, which files of the wheel differ). In a cluster the second build goes to another machine's "
        "builder when a live one builds the target. Doubles the build work; the admin page shows the share.",
        parse=_boolean,
    )  # fmt: skip
    admin_enabled: bool = setting(
        "admin", "enabled", False,
        "The admin page and JSON API (/admin/ on the main listener, or on its own address). Off by default.",
        parse=_boolean,
    )  # fmt: skip
    admin_token: str = setting(
        "admin", "token", "",
        "Bearer token every change (purge, delete, retry, build ahead, evict) must carry; \"\" allows no "
        "changes. Prefer the environment: WHEELFARM_ADMIN_TOKEN.",
        parse=_text,
    )  # fmt: skip
    admin_listen: str = setting(
        "admin", "listen", "",
        "\"host:port\" to serve admin on its own listener (e.g. \"127.0.0.1:8081\"); \"\" serves it at "
        "/admin/.",
        parse=_text,
    )  # fmt: skip

    provenance_key_file: Path | None = setting(
        "provenance", "key_file", None,
        "PEM private key (ed25519 or ECDSA P-256, no passphrase) the farm signs built wheels' provenance "
        "with; unset: one made at first start in <cache dir>/private/signing. In a cluster, give every host "
        "the same key. Its public key is published at /.well-known/wheelfarm/keys.json.",
        parse=_optional_path,
        example="/etc/wheelfarm/signing-key.pem",
    )  # fmt: skip

    cluster_database: str = setting(
        "cluster", "database", "",
        "PostgreSQL URL (\"postgresql://user:password@host/db\") of the build queue and records that several "
        "wheelfarm processes and hosts share; \"\" keeps them in this process (the embedded default). "
        "Prefer the environment: WHEELFARM_CLUSTER_DATABASE.",
        parse=_text,
    )  # fmt: skip
    cluster_store: Path | None = setting(
        "cluster", "store", None,
        "Folder every process of the cluster reaches (a shared mount) for built wheels, logs and provenance; "
        "unset: <cache_dir>/built.",
        parse=_optional_path,
        example="/srv/wheelfarm-shared/built",
    )  # fmt: skip
    cluster_lease_seconds: float = setting(
        "cluster", "lease_seconds", 60.0,
        "How long a builder holds a job without renewing its lease (it renews every third of this); a job "
        "whose lease expires is queued again for another builder.",
        parse=_number,
    )  # fmt: skip

    @property
    def offers_builds(self) -> bool:
        """Whether pages may offer builds: a builder here, or a cluster whose builders may be elsewhere."""
        return self.builder_enabled or bool(self.cluster_database)

    @property
    def plain_index_url(self) -> str:
        """Where builders install build requirements from: this proxy without the overlay (no recursion)."""
        if self.builder_index_url:
            return self.builder_index_url
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/plain/simple/"

    @property
    def upstream_simple_url(self) -> str:
        return self.upstream_url if self.upstream_url.endswith("/") else self.upstream_url + "/"


@dataclass(frozen=True, slots=True)
class Field:
    """One setting as the layers see it."""

    attr: str
    section: str
    key: str
    doc: str
    parse: Callable[[Any], Any]
    choices: tuple[str, ...]
    example: Any
    default: Any

    @property
    def env(self) -> str:
        return env_name(self.section, self.key)

    @property
    def flag(self) -> str:
        return flag_name(self.section, self.key)

    @property
    def kind(self) -> str:
        return _KINDS.get(self.parse, "string")


def fields() -> list[Field]:
    """Every setting, in documentation order."""
    found = []
    for item in dataclasses.fields(Settings):
        meta = item.metadata
        default = item.default if item.default is not dataclasses.MISSING else None
        found.append(
            Field(
                item.name,
                meta["section"],
                meta["key"],
                meta["doc"],
                meta["parse"],
                meta["choices"],
                meta["example"],
                default,
            )
        )
    return found


def env_name(section: str, key: str) -> str:
    return f"WHEELFARM_{section}_{key}".upper()


def flag_name(section: str, key: str) -> str:
    return f"--{section}-{key}".replace("_", "-")


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build Settings from the layers. ``overrides`` maps attribute -> flag value (None: flag not given)."""
    by_attr = {f.attr: f for f in fields()}
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(_from_toml(config_file))
    env = os.environ if environ is None else environ
    _refuse_unknown_variables(env)
    for item in by_attr.values():
        if item.env in env:
            values[item.attr] = _convert(item, env[item.env], f"environment variable {item.env}")
    for attr, value in (overrides or {}).items():
        if value is not None:
            values[attr] = _convert(by_attr[attr], value, f"flag {by_attr[attr].flag}")
    settings = Settings(**values)
    if settings.server_processes > 1 and settings.builder_enabled and not settings.cluster_database:
        raise SettingsError(
            f"[server] processes = {settings.server_processes} needs [cluster] database for builds (each "
            "process would run a builder pool and records of its own), or [builder] enabled = false"
        )
    return settings


def _refuse_unknown_variables(env: Mapping[str, str]) -> None:
    known = [f.env for f in fields()] + list(OTHER_VARIABLES)
    for name in sorted(env):
        if name.startswith("WHEELFARM_") and name not in known:
            closest = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"; did you mean {closest[0]}?" if closest else "; see config.example.toml"
            raise SettingsError(f"unknown environment variable {name}{hint}")


def _from_toml(path: Path) -> dict[str, Any]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
    by_name = {(f.section, f.key): f for f in fields()}
    values: dict[str, Any] = {}
    for section, table in document.items():
        if not isinstance(table, dict):
            raise SettingsError(f"config file {path}: '{section}' must be a [table]")
        for key, raw in table.items():
            item = by_name.get((section, key))
            if item is None:
                names = [f"[{s}] {k}" for s, k in by_name]
                closest = difflib.get_close_matches(f"[{section}] {key}", names, n=1, cutoff=0.6)
                hint = f"; did you mean {closest[0]}?" if closest else ""
                raise SettingsError(f"config file {path}: unknown setting [{section}] {key}{hint}")
            values[item.attr] = _convert(item, raw, f"[{section}] {key} in {path}")
    return values


# A zero here would refuse every connection or drop it at once.
_POSITIVE = (
    "server_header_timeout",
    "server_idle_timeout",
    "server_max_connections",
    "cluster_lease_seconds",
)


def _convert(item: Field, raw: Any, origin: str) -> Any:
    try:
        value = item.parse(raw)
    except (TypeError, ValueError):
        raise SettingsError(f"{origin}: {raw!r} is not a valid {item.kind}") from None
    if (
        item.attr == "admin_listen"
        and value
        and not re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}", value)
    ):
        raise SettingsError(f"{origin}: {raw!r} is not host:port")
    if item.choices:
        value = str(value).lower()
        if value not in item.choices:
            raise SettingsError(f"{origin}: {raw!r} is not one of {', '.join(item.choices)}")
    if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
        raise SettingsError(f"{origin}: {raw!r} must not be negative")
    if item.attr in _POSITIVE and not value > 0:
        raise SettingsError(f"{origin}: {raw!r} must be more than 0")
    if item.attr in ("port",) and not 0 < value < 65536:
        raise SettingsError(f"{origin}: {raw!r} is not a TCP port (1 to 65535)")
    return value


# --- config.example.toml, generated ---------------------------------------------------------------------

_EXAMPLE_HEADER = """\
# wheelfarm settings. Every key is optional; the values shown are the defaults.
# Precedence, later wins: these defaults < this file (--config) < WHEELFARM_<SECTION>_<KEY> environment
# variables < command-line flags (--<section>-<key>, plus the short --host/--port/--cache-dir/--upstream).
# Example: [cache] page_ttl = 600  ==  WHEELFARM_CACHE_PAGE_TTL=600  ==  --cache-page-ttl 600
# This file is generated from proxy/settings.py: `wheelfarm config example > config.example.toml`.
"""


def example_config() -> str:
    """config.example.toml: every setting with its description and default (a test keeps them equal)."""
    lines = [_EXAMPLE_HEADER.rstrip("\n")]
    section = ""
    for item in fields():
        if item.section != section:
            section = item.section
            lines += ["", f"[{section}]"]
        lines += _wrap(item.doc + (f" One of: {', '.join(item.choices)}." if item.choices else ""))
        if item.attr == "cache_dir" or (item.default is None and item.example is not None):
            lines.append(f"# {item.key} = {_toml(item.example)}")
        else:
            shown = f"{item.key} = {_toml(item.default)}"
            lines.append(shown + (f"   # e.g. {_toml(item.example)}" if item.example is not None else ""))
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if value is None:
        return '""'
    if isinstance(value, Path):
        value = str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _wrap(text: str, width: int = 108) -> list[str]:
    import textwrap

    return ["# " + line for line in textwrap.wrap(text, width - 2, break_on_hyphens=False)]
