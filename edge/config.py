"""Gateway configuration: one TOML file, validated once at start-up, overridable by ``MF_`` variables.

Why TOML plus environment: the file is what an installer edits on site and keeps in version control;
the environment is how systemd (``EnvironmentFile=``) or a container injects secrets (broker password,
signing key) without writing them into the file. ``MF_MQTT__PASSWORD=...`` overrides ``[mqtt]
password``; nested keys use ``__``, names are case-insensitive, a table takes JSON
(``MF_MQTT__TLS='{"ca_file": "/etc/ca.pem"}'``). Only ``gateway``, ``mqtt`` and ``outbox`` can be
overridden: lines and meters come from the file only.

The sections are msgspec Structs, validated by ``msgspec.convert`` (no pydantic in the gateway
process: its core and model builds were ~13 MiB of a 40 MB budget). Conversion is lax as the
pydantic models were (``port = "1883"`` is accepted; environment values are strings anyway).
A validation failure raises :class:`edge.errors.ConfigError` naming the key path and the line of the
TOML file it sits on (``edge.toml:14: lines[0].meters[2].address: ...``), or the variable it came
from, because an installer on a ladder cannot read a traceback. msgspec stops at the first defect.

Built in code (tests, the demo) a section is not range-checked; ``__post_init__`` still applies the
rules between fields and turns ``read`` names into :class:`~protocol.contract.Quantity`.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from edge.errors import ConfigError
from protocol.contract import DEFAULT_PREFIX, MAX_BATCH, Quantity
from protocol.structs import Loc, dotted, error_location

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

Id64 = Annotated[str, Meta(min_length=1, max_length=64, pattern=_ID)]
Positive = Annotated[float, Meta(gt=0)]


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A table of edge.toml: immutable, unknown keys refused (a typo must not pass silently)."""


class TlsConfig(_Section, frozen=True, kw_only=True):
    """Files for TLS to the broker; ``ca_file`` alone gives server authentication only."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_verify: bool = False  # only for a lab broker with a self-signed cert and no CA

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (client certificate and its key)")


class MqttConfig(_Section, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=1, le=65535)] = 1883
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str | None = None  # default: meterflow-<gateway id>
    username: str | None = None
    password: str | None = None
    tls: TlsConfig | None = None
    prefix: str = DEFAULT_PREFIX
    keepalive_s: Annotated[int, Meta(ge=5, le=3600)] = 30
    session_expiry_s: Annotated[int, Meta(ge=0)] = 7 * 86400
    batch_size: Annotated[int, Meta(ge=1, le=MAX_BATCH)] = MAX_BATCH
    max_inflight: Annotated[int, Meta(ge=1, le=100)] = 8  # batches awaiting PUBACK at once
    linger_s: Annotated[float, Meta(ge=0, le=10)] = 0.2  # wait this long to batch live readings
    reconnect_min_s: Positive = 1.0
    reconnect_max_s: Positive = 60.0
    status_interval_s: Positive = 60.0


class OutboxConfig(_Section, frozen=True, kw_only=True):
    # 7 days x 1,000 meters x one reading per 15 min = 672,000 rows; default leaves 3x headroom.
    max_rows: Annotated[int, Meta(ge=100)] = 2_000_000
    synchronous: Literal["FULL", "NORMAL"] = "FULL"


class MeterConfig(_Section, frozen=True, kw_only=True):
    """One meter on a line and its poll plan (what to read, how often)."""

    id: Annotated[str, Meta(min_length=1, max_length=64, pattern=_METER_ID)]
    protocol: Literal["dlt645", "modbus", "cjt188"]
    address: Annotated[str, Meta(min_length=1, max_length=16)]
    model: str | None = None
    circuit: Annotated[int, Meta(ge=0)] | None = None
    read: Annotated[tuple[Quantity, ...], Meta(min_length=1)] = (Quantity.ENERGY_TOTAL_KWH,)
    interval_s: Annotated[float, Meta(ge=0)] = 900.0
    read_state: bool = True  # also read relay/protect state each poll (one more transaction)
    password: Annotated[str, Meta(pattern=r"^[0-9]{6}$")] = "000000"  # noqa: S105 - DL/T 645 factory default
    password_level: Annotated[int, Meta(ge=0, le=9)] = 2
    operator: Annotated[str, Meta(pattern=r"^[0-9A-Fa-f]{8}$")] = "00000000"
    di_order: Literal["standard", "swapped"] = "standard"
    control_mode: Literal["close", "close_permit"] = "close"

    def __post_init__(self) -> None:
        if not self.read:
            raise ValueError("read: must name at least one quantity")
        try:
            msgspec.structs.force_setattr(self, "read", tuple(Quantity(q) for q in self.read))
        except ValueError as exc:
            raise ValueError(f"read: {exc}") from None
        digits = {"dlt645": 12, "cjt188": 14}.get(self.protocol)
        if digits is not None and not re.fullmatch(rf"[0-9A]{{{digits}}}", self.address):
            raise ValueError(
                f"address: {self.protocol} address must be {digits} digits, got {self.address!r}"
            )
        if self.protocol == "modbus" and not (self.address.isdigit() and 1 <= int(self.address) <= 247):
            raise ValueError(f"address: modbus address must be a unit id 1..247, got {self.address!r}")


class LineConfig(_Section, frozen=True, kw_only=True):
    """One RS-485 line: any pyserial URL (``/dev/ttyUSB0``, ``socket://host:port``, ``rfc2217://``)."""

    name: Id64
    url: Annotated[str, Meta(min_length=1)]
    baudrate: Annotated[int, Meta(ge=300, le=921600)] = 2400
    parity: Literal["N", "E", "O"] = "E"
    bytesize: Literal[7, 8] = 8
    stopbits: Literal[1, 2] = 1
    turnaround_s: Annotated[float, Meta(gt=0, le=10)] = 0.5
    inter_byte_s: Annotated[float, Meta(gt=0, le=10)] = 0.5
    retries: Annotated[int, Meta(ge=0, le=5)] = 2
    # silence between frames; None: 3.5 characters
    min_gap_s: Annotated[float, Meta(ge=0, le=1)] | None = None
    offline_after: Annotated[int, Meta(ge=1)] = 3  # consecutive failed polls before METER_OFFLINE
    backoff_max_s: Positive = 300.0
    meters: tuple[MeterConfig, ...] = ()


class GatewaySection(_Section, frozen=True, kw_only=True):
    id: Id64
    data_dir: Path = Path("/var/lib/meterflow")
    signing_key: str | None = None
    signing_key_file: Path | None = None
    # the id the cloud knows this key by (docs/security.md): k1 until a rotation installs k2 in keys.json
    signing_kid: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.\-]{1,32}$")] = "k1"
    offline_after_s: Annotated[float, Meta(ge=1)] = 300.0  # before the retained GatewayConfig says
    time_sync_at: Annotated[str, Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")] = "03:17"
    log_json: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    def __post_init__(self) -> None:
        if self.signing_key and self.signing_key_file:
            raise ValueError("give signing_key or signing_key_file, not both")

    def __repr__(self) -> str:
        # The key must not reach a log line or a traceback.
        shown = ", ".join(
            f"{name}={'***' if name == 'signing_key' and value else value!r}"
            for name, value in msgspec.structs.asdict(self).items()
        )
        return f"GatewaySection({shown})"


class EdgeConfig(_Section, frozen=True, kw_only=True):
    """The whole gateway configuration, built once and passed down (docs/development.md, "Configuration")."""

    gateway: GatewaySection
    mqtt: MqttConfig = msgspec.field(default_factory=MqttConfig)
    outbox: OutboxConfig = msgspec.field(default_factory=OutboxConfig)
    lines: tuple[LineConfig, ...] = ()

    def __post_init__(self) -> None:
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
            raise ValueError("mqtt.reconnect_max_s: must be >= mqtt.reconnect_min_s")

    # -- derived values -------------------------------------------------------------------------
    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"meterflow-{self.gateway.id}"

    def signing_key_bytes(self) -> bytes:
        """The commissioning HMAC key (from the key file when one is configured); ``edge.keys`` adds
        the keys installed since."""
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


def _key_lines(text: str) -> dict[Loc, int]:
    """Map key paths (``("lines", 0, "meters", 1, "address")``) to 1-based line numbers.

    A small scanner over the TOML text, good for the shapes this file uses (tables, arrays of tables,
    ``key = value``); anything it does not understand simply gets no line number.
    """
    where: dict[Loc, int] = {}
    counts: dict[Loc, int] = {}
    current: Loc = ()
    for number, raw in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(raw)
        if header:
            names = [part.strip().strip('"') for part in header.group(2).split(".")]
            path: Loc = ()
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


def _describe(
    exc: msgspec.ValidationError,
    source: str,
    lines: Mapping[Loc, int],
    env: Mapping[Loc, str],
) -> str:
    loc, msg = error_location(exc)
    # The deepest prefix of the path that an override set, or else that the scanner knows, says where.
    for end in range(len(loc), 0, -1):
        if loc[:end] in env:
            return f"{env[loc[:end]]} (environment): {dotted(loc)}: {msg}"
    number = None
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            number = lines[loc[:end]]
            break
    at = f"{source}:{number}" if number else source
    return f"{at}: {dotted(loc)}: {msg}"


_ENV_PREFIX = "MF_"
_ENV_SECTIONS: dict[str, type[_Section]] = {
    "gateway": GatewaySection,
    "mqtt": MqttConfig,
    "outbox": OutboxConfig,
}


def _table_type(section: type[msgspec.Struct], path: list[str]) -> bool:
    """Whether ``path`` under ``section`` names a table (its value is given as JSON)."""
    target: Any = section
    for name in path:
        fields = {f.name: f for f in msgspec.structs.fields(target)} if _is_struct(target) else {}
        if name not in fields:
            return False  # unknown key: passed on as a string, refused by validation with its name
        target = fields[name].type
        if isinstance(target, types.UnionType) or typing.get_origin(target) is typing.Union:
            options = [t for t in typing.get_args(target) if t is not type(None)]
            target = options[0] if len(options) == 1 else target
    return _is_struct(target)


def _is_struct(target: Any) -> bool:
    return isinstance(target, type) and issubclass(target, msgspec.Struct)


def _env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[Loc, str]]:
    """``MF_<SECTION>__<KEY>[__<KEY>...]`` variables as a nested mapping, and where each came from.

    An explicit mapping instead of pydantic-settings (whose imports cost ~3 MiB): names are
    case-insensitive, ``__`` nests, a whole table (``MF_MQTT``, ``MF_MQTT__TLS``) takes JSON, other
    values stay strings for lax validation to convert. Variables for other parts (``MF_MQTT_HOST``
    of the cloud, ``MF_REQUIRE_SERVICES``) do not match and are ignored.
    """
    overrides: dict[str, Any] = {}
    origins: dict[Loc, str] = {}
    for name in sorted(environ):
        if not name.upper().startswith(_ENV_PREFIX):
            continue
        path = name[len(_ENV_PREFIX) :].lower().split("__")
        section = _ENV_SECTIONS.get(path[0])
        if section is None or not all(path):
            continue
        value: Any = environ[name]
        if len(path) == 1 or _table_type(section, path[1:]):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise ConfigError(f"{name} (environment): a table is given as a JSON object: {exc}") from None
        node = overrides
        for key in path[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[path[-1]] = value
        origins[tuple(path)] = name
    return overrides, origins


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` laid on ``base``, tables merged key by key (a partial override keeps the file's rest)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _dec_hook(target: type, value: Any) -> Any:
    if target is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError(f"cannot make a {target.__name__} from {type(value).__name__}")


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
    origins: dict[Loc, str] = {}
    if env:
        overrides, origins = _env_overrides(os.environ)
        data = _merge(data, overrides)
    try:
        return msgspec.convert(data, EdgeConfig, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError(_describe(exc, str(file), _key_lines(text), origins)) from exc


def frame_budget_s(line: LineConfig, nbytes: int) -> float:
    """Wire time of ``nbytes`` on this line (start + data + parity + stop bits per character)."""
    bits = 1 + line.bytesize + (0 if line.parity == "N" else 1) + line.stopbits
    return nbytes * bits / line.baudrate
