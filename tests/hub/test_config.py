"""Configuration: the example file is valid and documents every key the loader knows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hub.config import FILE_KEYS, ConfigError, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "hub.example.toml"


def test_example_file_loads_and_matches_defaults() -> None:
    cfg = load_config(EXAMPLE, environ={})
    assert cfg.port == 8080 and cfg.reopen_within_hours == 24
    assert [(c.kind, c.name) for c in cfg.channels] == [("webchat", "webchat")]
    assert "identity_secret" not in cfg.channels[0].settings


def test_example_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    for section, key in FILE_KEYS:
        assert re.search(rf"^\[{section}\]", text, re.M), section
        assert re.search(rf"^#? ?{key} =", text, re.M), f"{section}.{key} is not documented"


def test_secrets_come_from_the_environment(tmp_path: Path) -> None:
    cfg = load_config(EXAMPLE, environ={"HUB_WEBCHAT_IDENTITY_SECRET": "s3cret", "HUB_PORT": "9000"})
    assert cfg.channels[0].settings["identity_secret"] == "s3cret"
    assert cfg.port == 9000


def test_default_without_file_runs_web_chat() -> None:
    cfg = load_config(None, environ={"HUB_DATABASE_URL": "postgresql://x@y/z"})
    assert [c.kind for c in cfg.channels] == ["webchat"]
    assert cfg.database_url == "postgresql://x@y/z"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[server]\nport = 'eighty'\n", "server.port"),
        ("[server]\nnope = 1\n", "unknown key server.nope"),
        ("[server\n", "Expected"),
        ("[[channels]]\nname = 'x'\n", "needs a kind"),
        ("[[channels]]\nkind = 'webchat'\n[[channels]]\nkind = 'webchat'\n", "share a name"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert message in info.value.detail
