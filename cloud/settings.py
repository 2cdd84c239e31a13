"""Typed settings of the cloud service, read once from ``MF_*`` environment variables.

Built once at start-up (``Settings()`` or :func:`load_settings`) and passed down; nothing below reads
the environment again. Outside ``MF_ENVIRONMENT=development`` the service refuses to start with the
built-in secret key, because that key signs every API token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cloud.domain.errors import PolicyError
from cloud.domain.localtime import zone

__all__ = ["DEFAULT_SECRET_KEY", "InsecureSettingsError", "Settings", "load_settings"]

DEFAULT_SECRET_KEY = "meterflow-development-secret-change-me"  # noqa: S105 - refused outside development


class InsecureSettingsError(ValueError):
    """A setting that is only acceptable on a developer's machine was used elsewhere."""


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "meterflow"


class Settings(BaseSettings):
    """Everything the cloud service needs to know about its surroundings."""

    model_config = SettingsConfigDict(env_prefix="MF_", extra="ignore", frozen=True)

    environment: Literal["development", "test", "production"] = "development"
    data_dir: Path = Field(default_factory=_default_data_dir)

    database_url: str = ""
    """SQLAlchemy URL; empty means ``sqlite:///<data_dir>/meterflow.db``."""
    database_echo: bool = False
    database_pool_size: int = Field(default=10, ge=1)
    sqlite_busy_timeout_ms: int = Field(default=30_000, ge=0)

    redis_url: str | None = None
    """Locks, rate limits and live events across replicas; in-process equivalents when unset."""

    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(default=1883, ge=1, le=65535)
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_tls: bool = False
    mqtt_ca_file: Path | None = None
    mqtt_prefix: str = "mf/v1"
    mqtt_shared: bool = True
    """Use ``$share/<group>/...`` subscriptions; the embedded demo broker may not support them."""
    mqtt_share_group: str = "meterflow"
    mqtt_client_id: str | None = None
    mqtt_protocol: Literal["5", "3.1.1"] = "5"
    """MQTT 5 (session expiry, shared subscriptions); "3.1.1" for brokers without v5, e.g. amqtt."""

    secret_key: SecretStr = SecretStr(DEFAULT_SECRET_KEY)
    token_ttl_s: int = Field(default=12 * 3600, ge=60)
    login_max_failures: int = Field(default=5, ge=1)
    """Failed logins per username within ``login_window_s`` before the account is locked."""
    login_window_s: int = Field(default=900, ge=1)
    login_lockout_s: int = Field(default=900, ge=1)

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    run_background: bool = True
    """``serve`` also runs ingest, control and jobs; API-only replicas set this to false."""

    timezone: str = "Asia/Shanghai"
    """Default local timezone of projects: friendly hours, holidays, daily aggregates. A tzdata name:
    anything else is refused at start-up, not by the daily job of every day after."""

    @field_validator("timezone")
    @classmethod
    def _tzdata_name(cls, value: str) -> str:
        try:
            zone(value)
        except PolicyError as exc:
            raise ValueError(f"MF_TIMEZONE: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _fill_and_check(self) -> Settings:
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{self.data_dir / 'meterflow.db'}")
        if self.environment != "development" and self.secret_key.get_secret_value() == DEFAULT_SECRET_KEY:
            raise InsecureSettingsError(
                f"MF_SECRET_KEY must be set to a private value when MF_ENVIRONMENT={self.environment}"
            )
        if len(self.secret_key.get_secret_value()) < 16:
            raise InsecureSettingsError("MF_SECRET_KEY must be at least 16 characters")
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with explicit overrides (tests, the demo)."""
    return Settings(**overrides)
