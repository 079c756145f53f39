"""Configuration: one TOML file (config/hub.example.toml documents every key), secrets from the
environment. Precedence: built-in defaults < file < environment (HUB_*) < command-line flags."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.errors import UserError


class ConfigError(UserError):
    def __init__(self, detail: str) -> None:
        super().__init__("invalid_configuration", detail, status=500)


@dataclass(slots=True)
class ChannelConfig:
    kind: str
    name: str
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class HubConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""
    data_dir: Path = Path("var")
    database_url: str = ""
    reopen_within_hours: float = 24.0
    default_region: str | None = None
    max_message_chars: int = 20_000
    max_attachment_bytes: int = 25 * 1024 * 1024
    session_days: float = 30.0
    outbox_max_attempts: int = 10
    outbox_base_delay: float = 2.0
    outbox_max_delay: float = 900.0
    outbox_lease: float = 60.0
    outbox_poll_interval: float = 1.0
    log_level: str = "INFO"
    routing_enabled: bool = True
    routing_file: Path | None = None
    channels: list[ChannelConfig] = field(default_factory=list)

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'hub.db').resolve()}"


FILE_KEYS: dict[tuple[str, str], tuple[str, type]] = {
    ("server", "host"): ("host", str),
    ("server", "port"): ("port", int),
    ("server", "public_url"): ("public_url", str),
    ("server", "data_dir"): ("data_dir", Path),
    ("server", "log_level"): ("log_level", str),
    ("database", "url"): ("database_url", str),
    ("conversations", "reopen_within_hours"): ("reopen_within_hours", float),
    ("contacts", "default_region"): ("default_region", str),
    ("limits", "max_message_chars"): ("max_message_chars", int),
    ("limits", "max_attachment_bytes"): ("max_attachment_bytes", int),
    ("auth", "session_days"): ("session_days", float),
    ("outbox", "max_attempts"): ("outbox_max_attempts", int),
    ("outbox", "base_delay_seconds"): ("outbox_base_delay", float),
    ("outbox", "max_delay_seconds"): ("outbox_max_delay", float),
    ("outbox", "lease_seconds"): ("outbox_lease", float),
    ("outbox", "poll_seconds"): ("outbox_poll_interval", float),
    ("routing", "enabled"): ("routing_enabled", bool),
    ("routing", "file"): ("routing_file", Path),
}

# Without a configuration file the hub runs web chat, as `make run` promises.
DEFAULT_CHANNEL = {"kind": "webchat", "name": "webchat", "identity_secret_env": "HUB_WEBCHAT_IDENTITY_SECRET"}

ENVIRONMENT = {
    "HUB_DATABASE_URL": ("database_url", str),
    "HUB_DATA_DIR": ("data_dir", Path),
    "HUB_HOST": ("host", str),
    "HUB_PORT": ("port", int),
    "HUB_PUBLIC_URL": ("public_url", str),
    "HUB_ROUTING_FILE": ("routing_file", Path),
}


def _coerce(value: Any, kind: type, where: str) -> Any:
    try:
        if kind is int and isinstance(value, bool):
            raise TypeError
        if kind is bool and not isinstance(value, bool):
            raise TypeError
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}") from None


def _channel(entry: Any, index: int, environ: dict[str, str]) -> ChannelConfig:
    if not isinstance(entry, dict) or "kind" not in entry:
        raise ConfigError(f"[[channels]] entry {index + 1} needs a kind")

    def secrets(table: dict[str, Any]) -> dict[str, Any]:
        # Secrets are never written in the file: `foo_env = "VAR"` reads `foo` from the environment,
        # in nested tables too ([channels.smtp], [[channels.mailboxes]]).
        resolved: dict[str, Any] = {}
        for key, value in table.items():
            if key.endswith("_env"):
                found = environ.get(str(value))
                if found is not None:
                    resolved[key[: -len("_env")]] = found
            elif isinstance(value, dict):
                resolved[key] = secrets(value)
            elif isinstance(value, list):
                resolved[key] = [secrets(v) if isinstance(v, dict) else v for v in value]
            elif key not in resolved:
                resolved[key] = value
        return resolved

    settings = secrets({k: v for k, v in entry.items() if k not in ("kind", "name")})
    return ChannelConfig(
        kind=str(entry["kind"]), name=str(entry.get("name", entry["kind"])), settings=settings
    )


def load_config(path: Path | None = None, environ: dict[str, str] | None = None) -> HubConfig:
    environ = dict(os.environ) if environ is None else environ
    cfg = HubConfig()
    raw: dict[str, Any] = {}
    if path is None and environ.get("HUB_CONFIG"):
        path = Path(environ["HUB_CONFIG"])
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"configuration file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        for section, values in raw.items():
            if section == "channels":
                if not isinstance(values, list):
                    raise ConfigError("channels must be an array of tables: [[channels]]")
                cfg.channels = [_channel(e, i, environ) for i, e in enumerate(values)]
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"[{section}] must be a table")
            for key, value in values.items():
                target = FILE_KEYS.get((section, key))
                if target is None:
                    raise ConfigError(f"{path}: unknown key {section}.{key} (see config/hub.example.toml)")
                setattr(cfg, target[0], _coerce(value, target[1], f"{section}.{key}"))
    if path is None or "channels" not in raw:
        cfg.channels = [_channel(DEFAULT_CHANNEL, 0, environ)]
    for var, (attr, kind) in ENVIRONMENT.items():
        if environ.get(var):
            setattr(cfg, attr, _coerce(environ[var], kind, var))
    names = [c.name for c in cfg.channels]
    if len(names) != len(set(names)):
        raise ConfigError("two channels share a name; every [[channels]] entry needs its own name")
    return cfg
