"""All configuration in one frozen object.

Layers, later ones winning: defaults, a TOML file, WHEELFARM_* environment variables, command-line flags.

This is the only module that reads the environment. Every setting has one name in each layer:
TOML ``[section] key``, environment ``WHEELFARM_SECTION_KEY``, flag ``--section-key`` (a few short aliases).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class SettingsError(ValueError):
    """A setting that cannot be used; the message names it and where it came from."""


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "wheelfarm"


@dataclass(frozen=True, slots=True)
class Settings:
    # [server]
    host: str = "127.0.0.1"
    port: int = 8080
    # [upstream]
    upstream_url: str = "https://pypi.org/simple/"
    upstream_connect_timeout: float = 10.0
    upstream_read_timeout: float = 30.0
    upstream_max_connections: int = 32
    upstream_ca_bundle: Path | None = None
    # [cache]
    cache_dir: Path = dataclasses.field(default_factory=_default_cache_dir)
    cache_page_ttl: float = 600.0
    cache_root_ttl: float = 3600.0
    cache_not_found_ttl: float = 60.0
    cache_stale_if_error: float = 7 * 24 * 3600.0
    cache_max_file_mb: int = 0
    cache_max_page_mb: int = 1024
    # [logging]
    logging_level: str = "info"
    logging_format: str = "auto"
    # [builder]
    builder_enabled: bool = True
    builder_workers: int = 2
    builder_hold_seconds: float = 12.0
    builder_retry_after: int = 5
    builder_sandbox: str = "required"
    builder_timeout: float = 900.0
    builder_memory_mb: int = 4096
    builder_processes: int = 512
    builder_max_file_mb: int = 1024
    builder_max_output_mb: int = 4096
    builder_max_metadata_kb: int = 8192
    builder_build_uid: int = 1_900_000_000
    builder_bwrap: str = ""
    builder_work_dir: Path | None = None
    builder_index_url: str = ""
    builder_interpreters: tuple[str, ...] = ()
    builder_targets: tuple[str, ...] = ("*",)
    builder_allow: tuple[str, ...] = ("*",)
    builder_deny: tuple[str, ...] = ()
    builder_orphan_retention: float = 7 * 24 * 3600.0
    builder_max_builds: int = 10_000
    # [admin]
    admin_enabled: bool = False
    admin_token: str = ""
    admin_listen: str = ""

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


# (section, key) -> attribute; the attribute's annotation gives the type.
_FIELDS: dict[tuple[str, str], str] = {
    ("server", "host"): "host",
    ("server", "port"): "port",
    ("upstream", "url"): "upstream_url",
    ("upstream", "connect_timeout"): "upstream_connect_timeout",
    ("upstream", "read_timeout"): "upstream_read_timeout",
    ("upstream", "max_connections"): "upstream_max_connections",
    ("upstream", "ca_bundle"): "upstream_ca_bundle",
    ("cache", "dir"): "cache_dir",
    ("cache", "page_ttl"): "cache_page_ttl",
    ("cache", "root_ttl"): "cache_root_ttl",
    ("cache", "not_found_ttl"): "cache_not_found_ttl",
    ("cache", "stale_if_error"): "cache_stale_if_error",
    ("cache", "max_file_mb"): "cache_max_file_mb",
    ("cache", "max_page_mb"): "cache_max_page_mb",
    ("logging", "level"): "logging_level",
    ("logging", "format"): "logging_format",
    ("builder", "enabled"): "builder_enabled",
    ("builder", "workers"): "builder_workers",
    ("builder", "hold_seconds"): "builder_hold_seconds",
    ("builder", "retry_after"): "builder_retry_after",
    ("builder", "sandbox"): "builder_sandbox",
    ("builder", "timeout"): "builder_timeout",
    ("builder", "memory_mb"): "builder_memory_mb",
    ("builder", "processes"): "builder_processes",
    ("builder", "max_file_mb"): "builder_max_file_mb",
    ("builder", "max_output_mb"): "builder_max_output_mb",
    ("builder", "max_metadata_kb"): "builder_max_metadata_kb",
    ("builder", "build_uid"): "builder_build_uid",
    ("builder", "bwrap"): "builder_bwrap",
    ("builder", "work_dir"): "builder_work_dir",
    ("builder", "index_url"): "builder_index_url",
    ("builder", "interpreters"): "builder_interpreters",
    ("builder", "targets"): "builder_targets",
    ("builder", "allow"): "builder_allow",
    ("builder", "deny"): "builder_deny",
    ("builder", "orphan_retention"): "builder_orphan_retention",
    ("builder", "max_builds"): "builder_max_builds",
    ("admin", "enabled"): "admin_enabled",
    ("admin", "token"): "admin_token",
    ("admin", "listen"): "admin_listen",
}
_TYPES: dict[str, str] = {f.name: str(f.type) for f in dataclasses.fields(Settings)}
_CHOICES: dict[str, tuple[str, ...]] = {
    "logging_level": ("debug", "info", "warning", "error"),
    "logging_format": ("auto", "json", "console"),
    "builder_sandbox": ("required",),  # builds always run in the sandbox; the key stays for old configs
}


def env_name(section: str, key: str) -> str:
    return f"WHEELFARM_{section}_{key}".upper()


def flag_name(section: str, key: str) -> str:
    return f"--{section}-{key}".replace("_", "-")


def _flag_for(attr: str) -> str:
    for (section, key), candidate in _FIELDS.items():
        if candidate == attr:
            return flag_name(section, key)
    return attr


def all_fields() -> list[tuple[str, str, str]]:
    """(section, key, attribute) for every setting, in documentation order."""
    return [(section, key, attr) for (section, key), attr in _FIELDS.items()]


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build Settings from the layers. ``overrides`` maps attribute -> flag value (None: flag not given)."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(_from_toml(config_file))
    env = os.environ if environ is None else environ
    for (section, key), attr in _FIELDS.items():
        name = env_name(section, key)
        if name in env:
            values[attr] = _convert(attr, env[name], f"environment variable {name}")
    for attr, value in (overrides or {}).items():
        if value is not None:
            values[attr] = _convert(attr, value, f"flag {_flag_for(attr)}")
    return Settings(**values)


def _from_toml(path: Path) -> dict[str, Any]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for section, table in document.items():
        if not isinstance(table, dict):
            raise SettingsError(f"config file {path}: '{section}' must be a [table]")
        for key, raw in table.items():
            attr = _FIELDS.get((section, key))
            if attr is None:
                raise SettingsError(f"config file {path}: unknown setting [{section}] {key}")
            values[attr] = _convert(attr, raw, f"[{section}] {key} in {path}")
    return values


def _boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError


def _convert(attr: str, raw: Any, origin: str) -> Any:
    kind = _TYPES[attr]
    try:
        if kind == "bool":
            value: Any = _boolean(raw)
        elif kind == "tuple[str, ...]":
            items = raw.split(",") if isinstance(raw, str) else raw
            if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
                raise ValueError
            value = tuple(i.strip() for i in items if i.strip())
        elif kind == "int":
            if isinstance(raw, bool):
                raise ValueError
            value = int(raw)
        elif kind == "float":
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw)
        elif kind in ("Path", "Path | None"):
            value = Path(raw).expanduser() if str(raw) else None
            if value is None and kind == "Path":
                raise ValueError
        else:
            value = str(raw)
    except (TypeError, ValueError):
        raise SettingsError(f"{origin}: {raw!r} is not a valid {kind}") from None
    if attr == "admin_listen" and value and not re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}", value):
        raise SettingsError(f"{origin}: {raw!r} is not host:port")
    if attr in _CHOICES and str(value).lower() not in _CHOICES[attr]:
        raise SettingsError(f"{origin}: {raw!r} is not one of {', '.join(_CHOICES[attr])}")
    if attr in _CHOICES:
        value = str(value).lower()
    if kind in ("int", "float") and value < 0:
        raise SettingsError(f"{origin}: {raw!r} must not be negative")
    return value
