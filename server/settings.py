"""Configuration from flags and RATING_* environment variables, flags winning."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LISTEN = "127.0.0.1:50051"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_DATA_DIR = Path("var")


def default_database_url(data_dir: Path) -> str:
    """The embedded default: a SQLite file under the data directory."""
    return f"sqlite+aiosqlite:///{(data_dir / 'rating.db').as_posix()}"


def normalise_database_url(url: str) -> str:
    """Accepts plain ``postgresql://`` and ``sqlite:///`` URLs and picks the async driver."""
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def existing_database(url: str) -> str:
    """`url`, for a command that must not create its database (`rating rebuild`, `rating
    admin`): SQLite would make an empty file of a mistyped path, so one that is not there
    is a SettingsError instead."""
    if is_sqlite(url):
        from sqlalchemy.engine import make_url

        path = make_url(url).database or ""
        if path and path != ":memory:" and not path.startswith("file:") and not Path(path).exists():
            raise SettingsError(f"database: no such file {path} (is it migrated? `rating migrate`)")
    return url


@dataclass(frozen=True)
class Settings:
    """Everything `rating serve` needs; see the configuration table in the README."""

    database_url: str
    listen: str = DEFAULT_LISTEN
    data_dir: Path = DEFAULT_DATA_DIR
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    log_level: str = "INFO"
    log_format: str = "json"
    grace_s: float = 10.0
    bootstrap: bool = False

    @property
    def embedded(self) -> bool:
        """True on the embedded SQLite default: migrate at start, create a default tenant."""
        return self.bootstrap

    @property
    def key_file(self) -> Path:
        return key_file_path(self.data_dir)


def key_file_path(data_dir: Path) -> Path:
    """Where the embedded default writes its all-scopes API key."""
    return data_dir / "api-key"


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


class SettingsError(ValueError):
    """A flag or RATING_* variable whose value cannot be used; names it."""


def _grace_s(flag: float | None) -> float:
    if flag is not None:
        value, name = flag, "--grace"
    else:
        name = "RATING_GRACE_S"
        raw = os.environ.get(name, "10")
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name}: not a number of seconds: {raw!r}") from None
    if not 0 <= value < float("inf"):
        raise SettingsError(f"{name}: must be zero or more seconds, got {value}")
    return value


def _log_level(flag: str | None) -> str:
    value = (flag or os.environ.get("RATING_LOG_LEVEL") or "INFO").upper()
    if value not in LOG_LEVELS:
        name = "--log-level" if flag else "RATING_LOG_LEVEL"
        raise SettingsError(f"{name}: one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return value


def load_settings(
    *,
    database_url: str | None = None,
    listen: str | None = None,
    data_dir: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_client_ca: str | None = None,
    log_level: str | None = None,
    log_format: str | None = None,
    grace_s: float | None = None,
) -> Settings:
    """Merges flags (arguments) over environment over defaults."""
    env = os.environ
    data = Path(data_dir or env.get("RATING_DATA_DIR") or DEFAULT_DATA_DIR)
    url = database_url or env.get("RATING_DATABASE_URL")
    bootstrap = url is None
    return Settings(
        database_url=normalise_database_url(url or default_database_url(data)),
        listen=listen or env.get("RATING_LISTEN") or DEFAULT_LISTEN,
        data_dir=data,
        tls_cert=Path(tls_cert) if tls_cert else _env_path("RATING_TLS_CERT"),
        tls_key=Path(tls_key) if tls_key else _env_path("RATING_TLS_KEY"),
        tls_client_ca=Path(tls_client_ca) if tls_client_ca else _env_path("RATING_TLS_CLIENT_CA"),
        log_level=_log_level(log_level),
        log_format=log_format or env.get("RATING_LOG_FORMAT") or "json",
        grace_s=_grace_s(grace_s),
        bootstrap=bootstrap,
    )
