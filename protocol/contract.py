"""Edge <-> cloud MQTT contract, version 1: topics, payload models and command signing.

This module is the single source of truth for both sides. The gateway publishes under
``{prefix}/gw/{gateway}/up/...`` and subscribes to ``{prefix}/gw/{gateway}/down/...``; the cloud does
the reverse, with a shared subscription (``$share/{group}/...``) so several replicas split the load.

Payloads are JSON objects with ``"v": 1``. Numbers that carry measurements or money travel as
strings (``Decimal`` in Python) so that no float ever touches a kWh or a fen.

Identity of a reading is ``(gateway, meter, seq)``; ``ts`` is the meter-side time of the reading. The
cloud applies each identity at most once, whatever the broker redelivers.

Commands are signed with HMAC-SHA256 over a canonical string of every field that gives the command
its meaning (see :func:`command_signing_input`) with the gateway's own key. The gateway refuses a
command whose signature does not verify, whose validity window does not contain "now", or whose id it
has already executed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from protocol.errors import CommandExpired, ContractError, SignatureError

__all__ = [
    "DEFAULT_PREFIX",
    "MAX_BATCH",
    "SCHEMA_VERSION",
    "Ack",
    "AckStatus",
    "Action",
    "Command",
    "CreditHorizon",
    "Event",
    "EventBatch",
    "EventKind",
    "GatewayConfig",
    "GatewayStatus",
    "LineStats",
    "Quantity",
    "Reading",
    "ReadingBatch",
    "RelayState",
    "Topics",
    "command_signing_input",
    "decode",
    "encode",
    "parse_topic",
    "sign_command",
    "verify_command",
]

SCHEMA_VERSION = 1
DEFAULT_PREFIX = "mf/v1"
MAX_BATCH = 1000
"""Largest number of readings (or events) in one MQTT message; keeps a payload well under 256 KiB."""

MeterId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:/\-]+$")]
GatewayId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
# 16 integer digits and 6 decimals cover every register of every meter we read, with headroom.
Measure = Annotated[Decimal, Field(max_digits=22, decimal_places=6, allow_inf_nan=False)]


class Quantity(StrEnum):
    """Names of the values a gateway reports; the cloud bills from these names only."""

    ENERGY_TOTAL_KWH = "energy_total_kwh"  # DL/T 645 00000000 / 00010000, Modbus total energy
    ENERGY_T1_KWH = "energy_t1_kwh"  # 尖 sharp
    ENERGY_T2_KWH = "energy_t2_kwh"  # 峰 peak
    ENERGY_T3_KWH = "energy_t3_kwh"  # 平 flat
    ENERGY_T4_KWH = "energy_t4_kwh"  # 谷 valley
    ENERGY_REVERSE_KWH = "energy_reverse_kwh"
    VOLTAGE_A_V = "voltage_a_v"
    VOLTAGE_B_V = "voltage_b_v"
    VOLTAGE_C_V = "voltage_c_v"
    CURRENT_A_A = "current_a_a"
    CURRENT_B_A = "current_b_a"
    CURRENT_C_A = "current_c_a"
    POWER_KW = "power_kw"
    POWER_A_KW = "power_a_kw"
    POWER_B_KW = "power_b_kw"
    POWER_C_KW = "power_c_kw"
    POWER_FACTOR = "power_factor"
    FREQUENCY_HZ = "frequency_hz"
    REMAINING_YUAN = "remaining_yuan"  # local-prepay meters: money left in the meter
    OVERDRAFT_YUAN = "overdraft_yuan"
    REMAINING_KWH = "remaining_kwh"
    PURCHASE_COUNT = "purchase_count"
    FLOW_TOTAL_M3 = "flow_total_m3"  # CJ/T 188 current cumulative flow
    FLOW_SETTLE_M3 = "flow_settle_m3"  # CJ/T 188 settlement-day flow


class RelayState(StrEnum):
    """Observed supply state: relay for electricity, valve for water."""

    CLOSED = "closed"  # supply on
    OPEN = "open"  # supply off (tripped / valve closed)
    UNKNOWN = "unknown"
    FAULT = "fault"


class Action(StrEnum):
    """What a command asks the gateway to do to one meter."""

    TRIP = "trip"
    CLOSE_PERMIT = "close_permit"  # 合闸允许: the tenant presses the meter's button
    CLOSE = "close"  # 直接合闸
    PROTECT = "protect"  # 保电
    UNPROTECT = "unprotect"
    ALARM = "alarm"
    ALARM_RELEASE = "alarm_release"
    VALVE_OPEN = "valve_open"
    VALVE_CLOSE = "valve_close"
    RECHARGE = "recharge"  # params: amount_fen (int), purchase_count (int, the count after this one)
    TIME_SYNC = "time_sync"


class AckStatus(StrEnum):
    DONE = "done"  # executed and the read-back state matches
    FAILED = "failed"  # executed (or tried) but the meter did not reach the state / did not answer
    REJECTED = "rejected"  # refused before execution: bad signature, expired, duplicate, unknown meter


class EventKind(StrEnum):
    METER_OFFLINE = "meter_offline"
    METER_ONLINE = "meter_online"
    AUTONOMY_TRIP = "autonomy_trip"
    COMMAND_REJECTED = "command_rejected"
    OUTBOX_OVERFLOW = "outbox_overflow"
    TIME_SYNC = "time_sync"
    GATEWAY_STARTED = "gateway_started"


class _Model(BaseModel):
    # defer_build: a model's validator and serializer are built on first use, so a gateway never
    # pays RAM for the models only the cloud uses (and vice versa). Wire format unchanged.
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False, defer_build=True)


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must carry a timezone offset")
    return value.astimezone(UTC)


class Reading(_Model):
    """One poll of one meter: a set of values read in one pass, with the supply state seen."""

    meter: MeterId
    seq: int = Field(ge=0, lt=2**63)
    ts: datetime
    values: dict[Quantity, Measure] = Field(default_factory=dict)
    relay: RelayState | None = None
    status: dict[str, bool] = Field(default_factory=dict)

    _ts = field_validator("ts")(_aware)


class ReadingBatch(_Model):
    v: Literal[1] = 1
    gateway: GatewayId
    batch: str = Field(min_length=1, max_length=64)
    sent_at: datetime
    readings: list[Reading] = Field(min_length=1, max_length=MAX_BATCH)

    _sent_at = field_validator("sent_at")(_aware)


class Event(_Model):
    id: str = Field(min_length=1, max_length=64)
    ts: datetime
    kind: EventKind
    meter: MeterId | None = None
    detail: dict[str, Any] = Field(default_factory=dict)

    _ts = field_validator("ts")(_aware)


class EventBatch(_Model):
    v: Literal[1] = 1
    gateway: GatewayId
    events: list[Event] = Field(min_length=1, max_length=MAX_BATCH)


class Command(_Model):
    """A signed instruction for one meter behind one gateway."""

    v: Literal[1] = 1
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")
    gateway: GatewayId
    meter: MeterId
    action: Action
    params: dict[str, int | str] = Field(default_factory=dict)
    issued_at: datetime
    expires_at: datetime
    sig: str = Field(default="", max_length=128)

    _times = field_validator("issued_at", "expires_at")(_aware)


class Ack(_Model):
    v: Literal[1] = 1
    gateway: GatewayId
    command: str = Field(min_length=1, max_length=64)
    meter: MeterId
    action: Action
    status: AckStatus
    observed: RelayState | None = None
    protected: bool | None = None
    detail: str = Field(default="", max_length=500)
    ts: datetime

    _ts = field_validator("ts")(_aware)


class LineStats(_Model):
    name: str
    url: str
    transactions: int = Field(ge=0)
    timeouts: int = Field(ge=0)
    errors: int = Field(ge=0)
    utilisation: Decimal = Field(ge=0, le=1, decimal_places=4)
    meters_online: int = Field(ge=0)
    meters_offline: int = Field(ge=0)


class GatewayStatus(_Model):
    """Retained on ``up/status``; the LWT publishes ``online=False`` with the same shape."""

    v: Literal[1] = 1
    gateway: GatewayId
    online: bool
    version: str = ""
    ts: datetime
    uptime_s: int = Field(default=0, ge=0)
    lines: list[LineStats] = Field(default_factory=list)
    outbox_backlog: int = Field(default=0, ge=0)
    outbox_oldest_age_s: int = Field(default=0, ge=0)
    autonomous: bool = False

    _ts = field_validator("ts")(_aware)


class CreditHorizon(_Model):
    """How far a meter may run while the cloud is unreachable.

    ``limit`` is an absolute register value of ``quantity`` (for example total kWh 1234.56): when the
    meter's register reaches it with the cloud unreachable, the gateway trips the meter unless
    ``protected``. Absolute values keep the rule true however long the outage lasts.
    """

    quantity: Literal[Quantity.ENERGY_TOTAL_KWH, Quantity.FLOW_TOTAL_M3]
    limit: Measure
    protected: bool = False


class GatewayConfig(_Model):
    """Retained on ``down/config``: what the cloud wants the gateway to know between commands."""

    v: Literal[1] = 1
    gateway: GatewayId
    issued_at: datetime
    horizons: dict[MeterId, CreditHorizon] = Field(default_factory=dict)
    offline_after_s: int = Field(default=300, ge=10, le=86400)

    _ts = field_validator("issued_at")(_aware)


class Topics:
    """Topic names for one gateway (or, with ``gateway="+"``, a subscription filter)."""

    def __init__(self, gateway: str, prefix: str = DEFAULT_PREFIX) -> None:
        base = f"{prefix}/gw/{gateway}"
        self.readings = f"{base}/up/readings"
        self.events = f"{base}/up/events"
        self.acks = f"{base}/up/acks"
        self.status = f"{base}/up/status"
        self.commands = f"{base}/down/commands"
        self.config = f"{base}/down/config"

    @staticmethod
    def shared(topic_filter: str, group: str = "ingest") -> str:
        """A shared-subscription filter: N subscribers in one group each get a share of messages."""
        return f"$share/{group}/{topic_filter}"


def parse_topic(topic: str, prefix: str = DEFAULT_PREFIX) -> tuple[str, str]:
    """Split ``{prefix}/gw/{id}/up/readings`` into ``("id", "up/readings")``."""
    head = f"{prefix}/gw/"
    if not topic.startswith(head):
        raise ContractError(f"topic {topic!r} is not under {head!r}")
    rest = topic[len(head) :].split("/")
    if len(rest) != 3 or rest[1] not in ("up", "down") or not rest[0]:
        raise ContractError(f"topic {topic!r} is not gw/<id>/(up|down)/<kind>")
    return rest[0], f"{rest[1]}/{rest[2]}"


M = TypeVar("M", bound=BaseModel)


def decode(model: type[M], payload: bytes | str) -> M:
    """Parse and validate a payload; any defect becomes a :class:`ContractError` naming it."""
    if isinstance(payload, bytes) and len(payload) > 4 * 1024 * 1024:
        raise ContractError(f"{model.__name__} payload too large: {len(payload)} bytes")
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "<root>"
        raise ContractError(
            f"invalid {model.__name__}: {where}: {first.get('msg')} ({exc.error_count()} error(s))"
        ) from exc
    except (ValueError, UnicodeDecodeError) as exc:  # pragma: no cover - pydantic wraps most
        raise ContractError(f"invalid {model.__name__}: {exc}") from exc


def encode(message: BaseModel) -> bytes:
    """Serialise a contract model to compact JSON bytes (decimals as strings)."""
    return message.model_dump_json(exclude_none=False).encode()


def _epoch(value: datetime) -> str:
    return str(int(value.timestamp()))


def command_signing_input(cmd: Command) -> bytes:
    """The canonical bytes that a command's HMAC covers.

    ``v1|id|gateway|meter|action|params-json|issued-epoch|expires-epoch``; params as JSON with sorted
    keys and no spaces, so both sides produce the same bytes from the same meaning.
    """
    params = json.dumps(cmd.params, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    parts = [
        f"v{cmd.v}",
        cmd.id,
        cmd.gateway,
        cmd.meter,
        cmd.action.value,
        params,
        _epoch(cmd.issued_at),
        _epoch(cmd.expires_at),
    ]
    return "|".join(parts).encode()


def sign_command(cmd: Command, key: bytes) -> Command:
    """Return a copy of ``cmd`` carrying its HMAC-SHA256 signature (hex)."""
    if not key:
        raise SignatureError("empty signing key")
    sig = hmac.new(key, command_signing_input(cmd), hashlib.sha256).hexdigest()
    return cmd.model_copy(update={"sig": sig})


def verify_command(
    cmd: Command, key: bytes, now: datetime, *, clock_skew: timedelta = timedelta(seconds=120)
) -> None:
    """Raise unless ``cmd`` is signed with ``key`` and ``now`` lies inside its validity window."""
    if not cmd.sig:
        raise SignatureError(f"command {cmd.id} is unsigned")
    if not key:
        raise SignatureError("no key configured to verify commands")
    expected = hmac.new(key, command_signing_input(cmd), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, cmd.sig.lower()):
        raise SignatureError(f"command {cmd.id}: signature does not verify")
    if cmd.expires_at <= cmd.issued_at:
        raise CommandExpired(f"command {cmd.id}: expires_at is not after issued_at")
    if now >= cmd.expires_at:
        raise CommandExpired(f"command {cmd.id} expired at {cmd.expires_at.isoformat()}")
    if now + clock_skew < cmd.issued_at:
        raise CommandExpired(f"command {cmd.id} is issued in the future ({cmd.issued_at.isoformat()})")
