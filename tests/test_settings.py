from __future__ import annotations

from pathlib import Path

import pytest

from proxy.cli import main
from proxy.settings import Settings, SettingsError, example_config, load_settings

REPO = Path(__file__).resolve().parent.parent


def test_example_config_documents_every_default() -> None:
    assert load_settings(REPO / "config.example.toml", environ={}) == Settings(cache_dir=Settings().cache_dir)


def test_layers_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "wheelfarm.toml"
    config.write_text('[server]\nport = 9000\nhost = "0.0.0.0"\n[cache]\npage_ttl = 5\n')
    settings = load_settings(
        config,
        environ={"WHEELFARM_SERVER_PORT": "9100", "WHEELFARM_CACHE_DIR": str(tmp_path / "c")},
        overrides={"port": "9200", "host": None},
    )
    assert settings.port == 9200
    assert settings.host == "0.0.0.0"
    assert settings.cache_page_ttl == 5.0
    assert settings.cache_dir == tmp_path / "c"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("[server]\nport = 'many'\n", r"\[server\] port .* not a valid int"),
        ("[server]\nprot = 1\n", r"unknown setting \[server\] prot"),
        ("[logging]\nformat = 'xml'\n", "not one of auto, json, console"),
        ("[cache]\npage_ttl = -1\n", "must not be negative"),
        ("server = 1\n", "must be a \\[table\\]"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_setting(tmp_path: Path, document: str, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(document)
    with pytest.raises(SettingsError, match=message):
        load_settings(config, environ={})


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="WHEELFARM_UPSTREAM_READ_TIMEOUT"):
        load_settings(environ={"WHEELFARM_UPSTREAM_READ_TIMEOUT": "soon"})


def test_cli_reports_bad_settings_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err


def test_example_config_is_generated_from_the_settings() -> None:
    """config.example.toml is what `wheelfarm config example` prints: one description per setting."""
    assert (REPO / "config.example.toml").read_text() == example_config()


def test_unknown_environment_variable_names_the_closest_setting() -> None:
    with pytest.raises(
        SettingsError, match="WHEELFARM_BUILDER_TIMOUT; did you mean WHEELFARM_BUILDER_TIMEOUT"
    ):
        load_settings(environ={"WHEELFARM_BUILDER_TIMOUT": "60"})
    # The operator's command line has a variable of its own; it is not a setting of the server.
    assert load_settings(environ={"WHEELFARM_ADMIN_URL": "http://127.0.0.1:8081/"}) is not None


def test_unknown_config_key_names_the_closest_setting(tmp_path: Path) -> None:
    config = tmp_path / "wheelfarm.toml"
    config.write_text("[builder]\nworker = 4\n")
    with pytest.raises(
        SettingsError, match=r"unknown setting \[builder\] worker; did you mean \[builder\] workers"
    ):
        load_settings(config, environ={})


def test_a_port_out_of_range_is_refused() -> None:
    with pytest.raises(SettingsError, match="not a TCP port"):
        load_settings(environ={}, overrides={"port": "70000"})


def test_serve_help_explains_each_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Seconds each sandboxed step of a build may take. (default: 900) [builder] timeout," in text
    assert "$WHEELFARM_BUILDER_TIMEOUT" in text
