"""Gateway configuration: one TOML file, validated once at start-up, overridable by ``MF_`` variables.

Why TOML plus environment: the file is what an installer edits on site and keeps in version control;
the environment is how systemd (``EnvironmentFile=``) or a container injects secrets (broker password,
signing key) without writing them into the file. ``MF_MQTT__PASSWORD=...`` overrides ``[mqtt]
password``; nested keys use ``__``. Lines and meters come from the file only.

A validation failure raises :class:`edge.errors.ConfigError` naming the key path and the line of the
TOML file it sits on (``edge.toml:14: lines[0].meters[2].address: ...``), because an installer on a
ladder cannot read a pydantic traceback.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edge.errors import ConfigError
from protocol.contract import DEFAULT_PREFIX, MAX_BATCH, Quantity

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings

__all__ = [
    "EdgeConfig",
    "GatewaySection",
    "LineConfig",
    "MeterConfig",
    "MqttConfig",
    "OutboxConfig",
    "TlsConfig",
    "load_config",
]

_ID = r"^[A-Za-z0-9_.\-]+$"
_METER_ID = r"^[A-Za-z0-9_.:/\-]+$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(_Section):
    """Files for TLS to the broker; ``ca_file`` alone gives server authentication only."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_verify: bool = False  # only for a lab broker with a self-signed cert and no CA

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (client certificate and its key)")
        return self


class MqttConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str | None = None  # default: meterflow-<gateway id>
    username: str | None = None
    password: str | None = None
    tls: TlsConfig | None = None
    prefix: str = DEFAULT_PREFIX
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    session_expiry_s: int = Field(default=7 * 86400, ge=0)
    batch_size: int = Field(default=MAX_BATCH, ge=1, le=MAX_BATCH)
    max_inflight: int = Field(default=8, ge=1, le=100)  # batches awaiting PUBACK at once
    linger_s: float = Field(default=0.2, ge=0, le=10)  # wait this long to batch live readings
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)
    status_interval_s: float = Field(default=60.0, gt=0)


class OutboxConfig(_Section):
    # 7 days x 1,000 meters x one reading per 15 min = 672,000 rows; default leaves 3x headroom.
    max_rows: int = Field(default=2_000_000, ge=100)
    synchronous: Literal["FULL", "NORMAL"] = "FULL"


class MeterConfig(_Section):
    """One meter on a line and its poll plan (what to read, how often)."""

    id: str = Field(min_length=1, max_length=64, pattern=_METER_ID)
    protocol: Literal["dlt645", "modbus", "cjt188"]
    address: str = Field(min_length=1, max_length=16)
    model: str | None = None
    circuit: int | None = Field(default=None, ge=0)
    read: tuple[Quantity, ...] = (Quantity.ENERGY_TOTAL_KWH,)
    interval_s: float = Field(default=900.0, ge=0)
    read_state: bool = True  # also read relay/protect state each poll (one more transaction)
    password: str = Field(default="000000", pattern=r"^[0-9]{6}$")
    password_level: int = Field(default=2, ge=0, le=9)
    operator: str = Field(default="00000000", pattern=r"^[0-9A-Fa-f]{8}$")
    di_order: Literal["standard", "swapped"] = "standard"
    control_mode: Literal["close", "close_permit"] = "close"

    @field_validator("read")
    @classmethod
    def _nonempty(cls, value: tuple[Quantity, ...]) -> tuple[Quantity, ...]:
        if not value:
            raise ValueError("read must name at least one quantity")
        return value

    @field_validator("address")
    @classmethod
    def _address(cls, value: str, info: ValidationInfo) -> str:
        protocol = info.data.get("protocol")
        digits = {"dlt645": 12, "cjt188": 14}.get(str(protocol))
        if digits is not None and not re.fullmatch(rf"[0-9A]{{{digits}}}", value):
            raise ValueError(f"{protocol} address must be {digits} digits, got {value!r}")
        if protocol == "modbus" and not (value.isdigit() and 1 <= int(value) <= 247):
            raise ValueError(f"modbus address must be a unit id 1..247, got {value!r}")
        return value


class LineConfig(_Section):
    """One RS-485 line: any pyserial URL (``/dev/ttyUSB0``, ``socket://host:port``, ``rfc2217://``)."""

    name: str = Field(min_length=1, max_length=64, pattern=_ID)
    url: str = Field(min_length=1)
    baudrate: int = Field(default=2400, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "E"
    bytesize: Literal[7, 8] = 8
    stopbits: Literal[1, 2] = 1
    turnaround_s: float = Field(default=0.5, gt=0, le=10)
    inter_byte_s: float = Field(default=0.5, gt=0, le=10)
    retries: int = Field(default=2, ge=0, le=5)
    min_gap_s: float | None = Field(default=None, ge=0, le=1)  # silence between frames; None: 3.5 chars
    offline_after: int = Field(default=3, ge=1)  # consecutive failed polls before METER_OFFLINE
    backoff_max_s: float = Field(default=300.0, gt=0)
    meters: tuple[MeterConfig, ...] = ()


class GatewaySection(_Section):
    id: str = Field(min_length=1, max_length=64, pattern=_ID)
    data_dir: Path = Path("/var/lib/meterflow")
    signing_key: str | None = Field(default=None, repr=False)
    signing_key_file: Path | None = None
    offline_after_s: float = Field(default=300.0, ge=1)  # before the retained GatewayConfig says
    time_sync_at: str = Field(default="03:17", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    log_json: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _one_key(self) -> GatewaySection:
        if self.signing_key and self.signing_key_file:
            raise ValueError("give signing_key or signing_key_file, not both")
        return self


class EdgeConfig(_Section):
    """The whole gateway configuration, built once and passed down (STYLE.md 13).

    A plain model, not a ``BaseSettings``: pydantic-settings and what it imports (dotenv,
    importlib.metadata, email, zipfile, its CLI source) cost ~3 MiB of a gateway's RSS, so it is
    imported only by :func:`load_config` when an ``MF_<SECTION>__...`` override is actually set.
    """

    gateway: GatewaySection
    mqtt: MqttConfig = MqttConfig()
    outbox: OutboxConfig = OutboxConfig()
    lines: tuple[LineConfig, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> EdgeConfig:
        seen_lines: set[str] = set()
        seen_meters: set[str] = set()
        for line in self.lines:
            if line.name in seen_lines:
                raise ValueError(f"duplicate line name {line.name!r}")
            seen_lines.add(line.name)
            addresses: set[tuple[str, str, int | None]] = set()
            for meter in line.meters:
                if meter.id in seen_meters:
                    raise ValueError(f"duplicate meter id {meter.id!r}")
                seen_meters.add(meter.id)
                key = (meter.protocol, meter.address, meter.circuit)
                if key in addresses:
                    raise ValueError(f"line {line.name}: two meters with {meter.protocol} address {key[1]}")
                addresses.add(key)
        if self.mqtt.reconnect_max_s < self.mqtt.reconnect_min_s:
            raise ValueError("mqtt.reconnect_max_s must be >= mqtt.reconnect_min_s")
        return self

    # -- derived values -------------------------------------------------------------------------
    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"meterflow-{self.gateway.id}"

    def signing_key_bytes(self) -> bytes:
        """The HMAC key for commands (from the key file when one is configured)."""
        if self.gateway.signing_key:
            return self.gateway.signing_key.encode()
        if self.gateway.signing_key_file is not None:
            try:
                return self.gateway.signing_key_file.read_bytes().strip()
            except OSError as exc:
                raise ConfigError(f"gateway.signing_key_file: cannot read: {exc}") from exc
        return b""

    def meters(self) -> Mapping[str, tuple[LineConfig, MeterConfig]]:
        return {m.id: (line, m) for line in self.lines for m in line.meters}


# -- loading with line numbers ------------------------------------------------------------------

_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\s\"]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"]+)\s*=")


def _key_lines(text: str) -> dict[tuple[str | int, ...], int]:
    """Map key paths (``("lines", 0, "meters", 1, "address")``) to 1-based line numbers.

    A small scanner over the TOML text, good for the shapes this file uses (tables, arrays of tables,
    ``key = value``); anything it does not understand simply gets no line number.
    """
    where: dict[tuple[str | int, ...], int] = {}
    counts: dict[tuple[str | int, ...], int] = {}
    current: tuple[str | int, ...] = ()
    for number, raw in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(raw)
        if header:
            names = [part.strip().strip('"') for part in header.group(2).split(".")]
            path: tuple[str | int, ...] = ()
            for i, name in enumerate(names):
                path = (*path, name)
                last = i == len(names) - 1
                if (last and header.group(1) == "[[") or (not last and path in counts):
                    if last:
                        counts[path] = counts.get(path, -1) + 1
                    path = (*path, counts[path])
            current = path
            where.setdefault(current, number)
            continue
        key = _KEY.match(raw)
        if key:
            where.setdefault((*current, key.group(1).strip('"')), number)
    return where


def _describe(exc: ValidationError, source: str, lines: Mapping[tuple[str | int, ...], int]) -> str:
    problems = []
    for error in exc.errors():
        loc = tuple(error.get("loc", ()))
        # The deepest prefix of the path that the scanner knows gives the line.
        number = None
        for end in range(len(loc), -1, -1):
            if loc[:end] in lines:
                number = lines[loc[:end]]
                break
        dotted = ""
        for part in loc:
            dotted += f"[{part}]" if isinstance(part, int) else (f".{part}" if dotted else str(part))
        at = f"{source}:{number}" if number else source
        msg = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        problems.append(f"{at}: {dotted or '<root>'}: {msg}")
    return "; ".join(problems)


_ENV_PREFIX = "MF_"
_ENV_SECTIONS = tuple(f"{_ENV_PREFIX}{name.upper()}" for name in EdgeConfig.model_fields)


def _env_settings() -> type[BaseSettings] | None:
    """An ``EdgeConfig`` that reads ``MF_`` variables, or None when none is set (the usual case).

    Built on demand so that pydantic-settings is imported only when the environment has something
    for it; it then does the parsing (``__`` nesting, JSON for tables, case-insensitive names).
    """
    if not any(name.upper().startswith(_ENV_SECTIONS) for name in os.environ):
        return None
    from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

    class EnvEdgeConfig(EdgeConfig, BaseSettings):
        model_config = SettingsConfigDict(
            env_prefix=_ENV_PREFIX,
            env_nested_delimiter="__",
            extra="forbid",
            frozen=True,
            case_sensitive=False,
        )

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            # Environment first: it overrides the file (passed in as init kwargs).
            return (env_settings, init_settings)

    return EnvEdgeConfig


def load_config(path: str | Path, *, env: bool = True) -> EdgeConfig:
    """Read and validate ``edge.toml``; ``MF_*`` variables override it unless ``env=False``."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read configuration: {exc}") from exc
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from exc
    try:
        settings = _env_settings() if env else None
        if settings is not None:
            # Re-validated as a plain EdgeConfig so callers never see the settings subclass.
            return EdgeConfig.model_validate(settings(**data).model_dump())
        return EdgeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, str(file), _key_lines(text))) from exc


def frame_budget_s(line: LineConfig, nbytes: int) -> float:
    """Wire time of ``nbytes`` on this line (start + data + parity + stop bits per character)."""
    bits = 1 + line.bytesize + (0 if line.parity == "N" else 1) + line.stopbits
    return nbytes * bits / line.baudrate
