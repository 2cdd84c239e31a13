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

Every other message is sent sealed: a :class:`Sealed` envelope ``{"v":1,"kid":…,"sig":…,"body":…}``
whose ``body`` is the message's JSON exactly as its sender built it. The HMAC covers the topic kind,
the gateway id and the key id bound to those bytes (:func:`message_signing_input`), so the receiver
checks the bytes it received without re-encoding anything, and a genuine message moved to another
gateway's topic or to another kind of topic does not verify. Who may send what: the gateway seals
``up/*`` (readings, events, acks, status and its LWT), the cloud seals ``down/config``; a topic alone
proves nothing, since anyone with broker access can publish on it.

Keys have an id (``kid``): a gateway starts with :data:`FIRST_KID` and each rotation adds the next
(``k2``, ``k3``…). Both sides hold several keys during a rotation's overlap and pick the key to verify
with by the message's ``kid``; which keys are acceptable at a given moment is the holder's business
(``edge.keys``, ``cloud.services.keys``), not the contract's.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

from protocol.errors import CommandExpired, ConfigExpired, ContractError, SignatureError
from protocol.structs import dotted, error_location

__all__ = [
    "CONFIG_CLOCK_SKEW",
    "DEFAULT_PREFIX",
    "FIRST_KID",
    "HORIZON_QUANTITIES",
    "MAX_BATCH",
    "MAX_PLANNED_METERS",
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
    "Kind",
    "LineStats",
    "PlannedMeter",
    "Quantity",
    "Reading",
    "ReadingBatch",
    "RelayState",
    "Sealed",
    "SealedMessage",
    "Topics",
    "Unsealed",
    "check_config_window",
    "command_signing_input",
    "decode",
    "encode",
    "is_key_id",
    "kind_of",
    "message_signing_input",
    "open_message",
    "parse_topic",
    "seal",
    "seal_message",
    "sign_command",
    "unseal",
    "validate",
    "verify_command",
]

SCHEMA_VERSION = 1
DEFAULT_PREFIX = "mf/v1"
MAX_BATCH = 1000
"""Largest number of readings (or events) in one MQTT message; keeps a payload well under 256 KiB."""

MeterId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:/\-]+$")]
GatewayId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
Timestamp = Annotated[datetime, Meta(tz=True)]
"""RFC 3339 with an offset; normalised to UTC by each message's ``__post_init__``."""
NonNegative = Annotated[int, Meta(ge=0)]
Id64 = Annotated[str, Meta(min_length=1, max_length=64)]
_KEY_ID_PATTERN = r"^[A-Za-z0-9_.\-]{1,32}$"
KeyId = Annotated[str, Meta(min_length=1, max_length=32, pattern=_KEY_ID_PATTERN)]
"""A signing key's id: short, and safe to place in JSON and in the signing input as it is."""
FIRST_KID = "k1"
"""The id of the key a gateway is created with; each rotation adds the next (``k2``, ``k3``, …)."""
CONFIG_CLOCK_SKEW = timedelta(minutes=5)
"""How far ahead of the gateway's clock a config may be issued before it counts as "from the future"."""
# A measure (``Decimal``): finite, 16 integer digits and 6 decimals at most, which covers every
# register of every meter we read with headroom. msgspec has no digit constraints for Decimal, so
# :func:`_check_decimal` enforces them (the same rule as pydantic's max_digits/decimal_places).
MEASURE_DIGITS, MEASURE_PLACES = 22, 6


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
    CONFIG_REJECTED = "config_rejected"  # a down/config refused: unsigned, forged, stale, not newer
    OUTBOX_OVERFLOW = "outbox_overflow"
    TIME_SYNC = "time_sync"
    GATEWAY_STARTED = "gateway_started"
    # A meter answers but some value it was polled for is not delivered (refused, garbled, not a
    # value); sent when the set of such values changes, ``detail["values"]`` = {name: reason}, {}
    # when everything is back.
    VALUE_UNAVAILABLE = "value_unavailable"


class _Model(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every payload: immutable, unknown JSON keys refused.

    msgspec validates types, ranges, lengths and patterns while decoding (in C, no model build at
    import: a gateway pays neither pydantic's RAM nor its start-up). A constructor call does not check
    those; ``__post_init__`` runs on both paths and holds the rules that must also hold for messages
    built in Python: timestamps aware and in UTC, measures within their digits. Code that builds a
    message from outside input re-checks it with :func:`validate`.
    """


def _utc(message: _Model, *names: str) -> None:
    for name in names:
        value: datetime = getattr(message, name)
        if value.tzinfo is UTC:
            continue
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{name}: timestamp must carry a timezone offset")
        msgspec.structs.force_setattr(message, name, value.astimezone(UTC))


def _check_decimal(
    value: Decimal,
    where: str,
    key: object = None,
    *,
    max_digits: int | None = MEASURE_DIGITS,
    places: int = MEASURE_PLACES,
) -> None:
    """Finite, at most ``places`` decimals and ``max_digits`` digits (trailing zeros do not count).

    ``where`` (and ``key`` for a mapping's value) names the field in the error; the name is only
    put together on an error, as this runs for every value of every reading decoded.
    """
    if not isinstance(value, Decimal):
        raise TypeError(f"{_field(where, key)}: expected a decimal, got {type(value).__name__}")
    if not value.is_finite():
        raise ValueError(f"{_field(where, key)}: must be a finite number, got {value}")
    _sign, digit_tuple, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite
    n = len(digit_tuple)
    short = max_digits is not None and n <= max_digits and n + exponent <= max_digits - places
    if short and exponent >= -places:
        return  # the usual value: within every limit even before trailing zeros are dropped
    digits = list(digit_tuple)
    while digits and digits[-1] == 0 and exponent < 0:
        digits.pop()
        exponent += 1
    if not any(digits):
        return  # zero, whatever its exponent
    if exponent >= 0:
        total, decimals = len(digits) + exponent, 0
    else:
        decimals = -exponent
        total = max(len(digits), decimals)
    problem = None
    if max_digits is not None and total > max_digits:
        problem = f"no more than {max_digits} digits in total"
    elif decimals > places:
        problem = f"no more than {places} decimal places"
    elif max_digits is not None and total - decimals > max_digits - places:
        problem = f"no more than {max_digits - places} digits before the point"
    if problem is not None:
        raise ValueError(f"{_field(where, key)}: {problem}, got {value}")


def _field(where: str, key: object) -> str:
    return where if key is None else f"{where}.{key}"


class Reading(_Model, frozen=True, kw_only=True):
    """One poll of one meter: a set of values read in one pass, with the supply state seen."""

    meter: MeterId
    seq: Annotated[int, Meta(ge=0, le=2**63 - 1)]
    ts: Timestamp
    values: dict[Quantity, Decimal] = {}
    relay: RelayState | None = None
    status: dict[str, bool] = {}

    def __post_init__(self) -> None:
        _utc(self, "ts")
        for quantity, value in self.values.items():
            _check_decimal(value, "values", quantity)


class ReadingBatch(_Model, frozen=True, kw_only=True):
    v: Literal[1] = 1
    gateway: GatewayId
    batch: Id64
    sent_at: Timestamp
    readings: Annotated[list[Reading], Meta(min_length=1, max_length=MAX_BATCH)]

    def __post_init__(self) -> None:
        _utc(self, "sent_at")


class Event(_Model, frozen=True, kw_only=True):
    id: Id64
    ts: Timestamp
    kind: EventKind
    meter: MeterId | None = None
    detail: dict[str, Any] = {}

    def __post_init__(self) -> None:
        _utc(self, "ts")


class EventBatch(_Model, frozen=True, kw_only=True):
    v: Literal[1] = 1
    gateway: GatewayId
    events: Annotated[list[Event], Meta(min_length=1, max_length=MAX_BATCH)]


class Command(_Model, frozen=True, kw_only=True):
    """A signed instruction for one meter behind one gateway."""

    v: Literal[1] = 1
    id: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]
    gateway: GatewayId
    meter: MeterId
    action: Action
    params: dict[str, int | str] = {}
    issued_at: Timestamp
    expires_at: Timestamp
    kid: Annotated[str, Meta(max_length=32, pattern=r"^[A-Za-z0-9_.\-]*$")] = ""
    sig: Annotated[str, Meta(max_length=128)] = ""

    def __post_init__(self) -> None:
        _utc(self, "issued_at", "expires_at")


class Ack(_Model, frozen=True, kw_only=True):
    v: Literal[1] = 1
    gateway: GatewayId
    command: Id64
    meter: MeterId
    action: Action
    status: AckStatus
    observed: RelayState | None = None
    protected: bool | None = None
    detail: Annotated[str, Meta(max_length=500)] = ""
    ts: Timestamp

    def __post_init__(self) -> None:
        _utc(self, "ts")


class LineStats(_Model, frozen=True, kw_only=True):
    name: str
    url: str
    transactions: NonNegative
    timeouts: NonNegative
    errors: NonNegative
    utilisation: Decimal  # 0..1, 4 decimals at most
    meters_online: NonNegative
    meters_offline: NonNegative

    def __post_init__(self) -> None:
        _check_decimal(self.utilisation, "utilisation", max_digits=None, places=4)
        if not 0 <= self.utilisation <= 1:
            raise ValueError(f"utilisation: must lie in 0..1, got {self.utilisation}")


class GatewayStatus(_Model, frozen=True, kw_only=True):
    """Retained on ``up/status``; the LWT publishes ``online=False`` with the same shape."""

    v: Literal[1] = 1
    gateway: GatewayId
    online: bool
    version: str = ""
    ts: Timestamp
    uptime_s: NonNegative = 0
    lines: list[LineStats] = []
    outbox_backlog: NonNegative = 0
    outbox_oldest_age_s: NonNegative = 0
    autonomous: bool = False

    def __post_init__(self) -> None:
        _utc(self, "ts")


HORIZON_QUANTITIES = frozenset({Quantity.ENERGY_TOTAL_KWH, Quantity.FLOW_TOTAL_M3})


class CreditHorizon(_Model, frozen=True, kw_only=True):
    """How far a meter may run while the cloud is unreachable.

    ``limit`` is an absolute register value of ``quantity`` (for example total kWh 1234.56): when the
    meter's register reaches it with the cloud unreachable, the gateway trips the meter unless
    ``protected``. Absolute values keep the rule true however long the outage lasts. ``quantity`` is
    one of :data:`HORIZON_QUANTITIES`, the cumulative registers.
    """

    quantity: Quantity
    limit: Decimal
    protected: bool = False

    def __post_init__(self) -> None:
        if self.quantity not in HORIZON_QUANTITIES:
            allowed = ", ".join(sorted(HORIZON_QUANTITIES))
            raise ValueError(f"quantity: must be one of {allowed}, got {str(self.quantity)!r}")
        _check_decimal(self.limit, "limit")


MAX_PLANNED_METERS = 2048
"""Most meters one gateway config may plan (8 lines of 256 unit loads)."""


class PlannedMeter(_Model, frozen=True, kw_only=True):
    """One meter the cloud wants the gateway to poll, and how (its poll plan).

    The cloud is the source of truth for a commissioned site's meters: ``meterflow edge register``
    sends the scanned meters up, a manager assigns them to rooms, and the gateway gets the assigned
    ones here. ``line`` names a line of the gateway's ``edge.toml`` (the port stays local).
    """

    id: MeterId
    line: GatewayId
    protocol: Literal["dlt645", "modbus", "cjt188"]
    address: Annotated[str, Meta(min_length=1, max_length=16, pattern=r"^[0-9A]+$")]
    model: Annotated[str, Meta(max_length=64)] | None = None
    circuit: Annotated[int, Meta(ge=0, le=255)] | None = None
    read: Annotated[tuple[Quantity, ...], Meta(min_length=1, max_length=32)] = (Quantity.ENERGY_TOTAL_KWH,)
    interval_s: Annotated[int, Meta(ge=1, le=86400)] = 900


class GatewayConfig(_Model, frozen=True, kw_only=True):
    """Retained on ``down/config``, sealed by the cloud: what the gateway must know between commands.

    ``version`` rises with every config the cloud issues for the gateway; the gateway only takes a
    version newer than the one in force, so a replayed older config changes nothing. ``expires_at``
    bounds when a config may still be *accepted* (a stale retained config is refused); a config
    already in force stays in force past it (see :mod:`edge.autonomy`). :func:`check_config_window`
    holds the time rules.
    """

    v: Literal[1] = 1
    gateway: GatewayId
    version: Annotated[int, Meta(ge=1, le=2**63 - 1)]
    issued_at: Timestamp
    expires_at: Timestamp
    horizons: dict[MeterId, CreditHorizon] = {}
    offline_after_s: Annotated[int, Meta(ge=10, le=86400)] = 300
    meters: Annotated[tuple[PlannedMeter, ...], Meta(max_length=MAX_PLANNED_METERS)] | None = None
    """The meters to poll (None: the cloud plans none, edge.toml's list alone is used)."""

    def __post_init__(self) -> None:
        _utc(self, "issued_at", "expires_at")
        if self.meters is not None and len({m.id for m in self.meters}) != len(self.meters):
            raise ValueError("meters: two planned meters with one id")


class Kind(StrEnum):
    """The kind part of a topic (what :func:`parse_topic` returns after the gateway id)."""

    READINGS = "up/readings"
    EVENTS = "up/events"
    ACKS = "up/acks"
    STATUS = "up/status"
    COMMANDS = "down/commands"
    CONFIG = "down/config"


class Topics:
    """Topic names for one gateway (or, with ``gateway="+"``, a subscription filter)."""

    def __init__(self, gateway: str, prefix: str = DEFAULT_PREFIX) -> None:
        base = f"{prefix}/gw/{gateway}"
        self.readings = f"{base}/{Kind.READINGS}"
        self.events = f"{base}/{Kind.EVENTS}"
        self.acks = f"{base}/{Kind.ACKS}"
        self.status = f"{base}/{Kind.STATUS}"
        self.commands = f"{base}/{Kind.COMMANDS}"
        self.config = f"{base}/{Kind.CONFIG}"

    def of(self, kind: Kind) -> str:
        """The topic of ``kind`` for this gateway."""
        return {
            Kind.READINGS: self.readings,
            Kind.EVENTS: self.events,
            Kind.ACKS: self.acks,
            Kind.STATUS: self.status,
            Kind.COMMANDS: self.commands,
            Kind.CONFIG: self.config,
        }[kind]

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


M = TypeVar("M", bound=_Model)

_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}
_encoder = msgspec.json.Encoder()


def decode(model: type[M], payload: bytes | str) -> M:
    """Parse and validate a payload; any defect becomes a :class:`ContractError` naming it.

    The message names the first defect and where it is: ``invalid ReadingBatch:
    readings[0].seq: Expected `int` >= 0``.
    """
    if len(payload) > 4 * 1024 * 1024:
        raise ContractError(f"{model.__name__} payload too large: {len(payload)} bytes")
    decoder = _decoders.get(model)
    if decoder is None:
        decoder = _decoders.setdefault(model, msgspec.json.Decoder(model))
    try:
        message: M = decoder.decode(payload)
    except msgspec.ValidationError as exc:
        loc, what = error_location(exc)
        raise ContractError(f"invalid {model.__name__}: {dotted(loc)}: {what}") from exc
    except (msgspec.DecodeError, UnicodeError) as exc:
        raise ContractError(f"invalid {model.__name__}: {exc}") from exc
    return message


def encode(message: _Model) -> bytes:
    """Serialise a contract message to compact JSON bytes (decimals as strings, UTC times with Z)."""
    return _encoder.encode(message)


def validate(message: M) -> M:
    """``message`` checked against every rule of the contract, as the receiving side will check it.

    For messages built in Python from outside input (a meter's reading, a configured id): a
    constructor does not check ranges, lengths and patterns, decoding does. Raises
    :class:`ContractError` naming the defect.
    """
    return decode(type(message), encode(message))


def _epoch(value: datetime) -> str:
    return str(int(value.timestamp()))


def command_signing_input(cmd: Command) -> bytes:
    """The canonical bytes that a command's HMAC covers.

    ``v1|id|gateway|meter|action|params-json|issued-epoch|expires-epoch|kid``; params as JSON with
    sorted keys and no spaces, so both sides produce the same bytes from the same meaning.
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
        cmd.kid,
    ]
    return "|".join(parts).encode()


def sign_command(cmd: Command, key: bytes, *, kid: str) -> Command:
    """Return a copy of ``cmd`` carrying ``kid`` and its HMAC-SHA256 signature (hex) under ``key``."""
    if not key:
        raise SignatureError("empty signing key")
    if not is_key_id(kid):
        raise SignatureError(f"not a key id: {kid!r}")
    kidded = msgspec.structs.replace(cmd, kid=kid)
    sig = hmac.new(key, command_signing_input(kidded), hashlib.sha256).hexdigest()
    return msgspec.structs.replace(kidded, sig=sig)


def verify_command(
    cmd: Command, key: bytes, now: datetime, *, clock_skew: timedelta = timedelta(seconds=120)
) -> None:
    """Raise unless ``cmd`` is signed with ``key`` and ``now`` lies inside its validity window.

    ``key`` is the receiver's key for ``cmd.kid`` (``b""`` when it holds none under that id).
    """
    if not cmd.sig:
        raise SignatureError(f"command {cmd.id} is unsigned")
    if not key:
        raise SignatureError(f"command {cmd.id}: no valid key {cmd.kid!r} to verify it with")
    expected = hmac.new(key, command_signing_input(cmd), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, cmd.sig.lower()):
        raise SignatureError(f"command {cmd.id}: signature does not verify")
    if cmd.expires_at <= cmd.issued_at:
        raise CommandExpired(f"command {cmd.id}: expires_at is not after issued_at")
    if now >= cmd.expires_at:
        raise CommandExpired(f"command {cmd.id} expired at {cmd.expires_at.isoformat()}")
    if now + clock_skew < cmd.issued_at:
        raise CommandExpired(f"command {cmd.id} is issued in the future ({cmd.issued_at.isoformat()})")


def check_config_window(
    config: GatewayConfig, now: datetime, *, clock_skew: timedelta = CONFIG_CLOCK_SKEW
) -> None:
    """Raise :class:`ConfigExpired` unless ``config`` may be accepted at ``now``.

    Refused: a window that ends before it starts, a config whose acceptance window has passed, and a
    config issued more than ``clock_skew`` ahead of ``now`` (the forged 2099 config that would make
    every later genuine config look "older" is refused on this rule alone, signed or not).
    """
    if config.expires_at <= config.issued_at:
        raise ConfigExpired(f"config v{config.version}: expires_at is not after issued_at")
    if now >= config.expires_at:
        raise ConfigExpired(f"config v{config.version} expired at {config.expires_at.isoformat()}")
    if now + clock_skew < config.issued_at:
        raise ConfigExpired(
            f"config v{config.version} is issued in the future ({config.issued_at.isoformat()})"
        )


# -- sealed messages ----------------------------------------------------------------------------

_KEY_ID = re.compile(_KEY_ID_PATTERN)
_GATEWAY_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
MAX_PAYLOAD = 4 * 1024 * 1024


def is_key_id(kid: str) -> bool:
    """Whether ``kid`` is a well-formed key id (letters, digits, ``_ . -``; 1–32 characters)."""
    return _KEY_ID.match(kid) is not None


class Sealed(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The envelope of a signed message; ``body`` stays the sender's exact bytes (``msgspec.Raw``)."""

    v: Literal[1] = 1
    kid: KeyId
    sig: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
    body: msgspec.Raw


class Unsealed(msgspec.Struct, frozen=True):
    """What :func:`unseal` found genuine: the key id it verified with and the body's bytes."""

    kid: str
    body: bytes


SealedMessage = ReadingBatch | EventBatch | Ack | GatewayStatus | GatewayConfig
"""The messages that travel sealed (commands carry their own signature)."""

_KIND_OF: dict[type[Any], Kind] = {
    ReadingBatch: Kind.READINGS,
    EventBatch: Kind.EVENTS,
    Ack: Kind.ACKS,
    GatewayStatus: Kind.STATUS,
    GatewayConfig: Kind.CONFIG,
}
_sealed_decoder = msgspec.json.Decoder(Sealed)


def kind_of(message: SealedMessage) -> Kind:
    """The topic kind a sealed message travels on."""
    return _KIND_OF[type(message)]


def message_signing_input(kind: str, gateway: str, kid: str) -> bytes:
    """What a sealed message's HMAC covers before its body bytes: ``mf1|<kind>|<gateway>|<kid>|``.

    None of the three may contain ``|`` (kinds are fixed, ids are checked by pattern), so the
    prefix is unambiguous and the body follows it as it is.
    """
    return f"mf1|{kind}|{gateway}|{kid}|".encode()


def _mac(key: bytes, kind: str, gateway: str, kid: str, body: bytes | memoryview) -> str:
    mac = hmac.new(key, message_signing_input(kind, gateway, kid), hashlib.sha256)
    mac.update(body)
    return mac.hexdigest()


def seal(kind: str, gateway: str, body: bytes, *, kid: str, key: bytes) -> bytes:
    """``body`` (a message's JSON, built by the caller) in a signed envelope, as bytes to publish.

    The envelope is put together from bytes, so a gateway that builds its batch JSON by
    concatenating stored readings (``edge.outbox.batch_payload``) signs exactly what it sends.
    """
    if not key:
        raise SignatureError("empty signing key")
    if not is_key_id(kid):
        raise SignatureError(f"not a key id: {kid!r}")
    if _GATEWAY_ID.match(gateway) is None:
        raise SignatureError(f"not a gateway id: {gateway!r}")
    sig = _mac(key, kind, gateway, kid, body)
    return b'{"v":1,"kid":"' + kid.encode() + b'","sig":"' + sig.encode() + b'","body":' + body + b"}"


def seal_message(message: SealedMessage, *, kid: str, key: bytes) -> bytes:
    """A contract message sealed for its own topic kind and gateway: what gateways, the cloud's
    config publisher, the demo, benchmarks and tests all publish."""
    return seal(kind_of(message), message.gateway, encode(message), kid=kid, key=key)


def unseal(kind: str, gateway: str, payload: bytes, key_for: Callable[[str], bytes | None]) -> Unsealed:
    """The body of a genuine sealed message on ``kind`` of ``gateway``, or :class:`SignatureError`.

    ``key_for(kid)`` gives the receiver's key for that id, or ``None`` when it holds no valid key by
    that name (unknown, retired). The HMAC is compared in constant time, over the bytes received.
    """
    if len(payload) > MAX_PAYLOAD:
        raise SignatureError(f"payload too large: {len(payload)} bytes")
    try:
        envelope: Sealed = _sealed_decoder.decode(payload)
    except msgspec.ValidationError as exc:
        loc, what = error_location(exc)
        raise SignatureError(f"not a sealed message: {dotted(loc)}: {what}") from exc
    except (msgspec.DecodeError, UnicodeError) as exc:
        raise SignatureError(f"not a sealed message: {exc}") from exc
    key = key_for(envelope.kid)
    if not key:
        raise SignatureError(f"no valid key {envelope.kid!r} for gateway {gateway}")
    body = memoryview(envelope.body)
    expected = _mac(key, kind, gateway, envelope.kid, body)
    if not hmac.compare_digest(expected, envelope.sig):
        raise SignatureError(f"signature under key {envelope.kid!r} does not verify")
    return Unsealed(envelope.kid, body.tobytes())


def open_message(
    model: type[M], kind: str, gateway: str, payload: bytes, key_for: Callable[[str], bytes | None]
) -> tuple[str, M]:
    """:func:`unseal` then :func:`decode`: the key id and the verified message."""
    opened = unseal(kind, gateway, payload, key_for)
    return opened.kid, decode(model, opened.body)
