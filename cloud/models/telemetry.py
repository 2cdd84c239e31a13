"""Telemetry and control tables: what gateways report and what the cloud asks of them.

Idempotency lives in the schema, not in process memory, so several ingest replicas and a broker that
redelivers can never double-apply anything:

- ``reading`` is UNIQUE on ``(gateway_id, meter_device, seq)`` (the contract identity); a redelivered
  reading loses the insert and is skipped;
- ``processed_batch`` is UNIQUE on ``(gateway_id, batch)``; it is written in the same database
  transaction as the batch's readings and charges, so its presence means "fully applied";
- ``gateway_event`` is UNIQUE on ``(gateway_id, event_id)``;
- ``job_run`` is UNIQUE on ``(job, period)``: a job's work and its ``job_run`` row commit together, so a
  period runs exactly once whichever replica gets there first;
- ``alarm`` and ``notification_outbox`` carry a UNIQUE ``dedupe_key``, so re-evaluating a situation
  never multiplies the alerts it raises.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, LargeBinary, String, UniqueConstraint
from sqlmodel import Field, SQLModel

from cloud.models.base import BIG_ID, FEN, MicroDecimal, UTCDateTime, utcnow

__all__ = [
    "AccountState",
    "Alarm",
    "AlarmKind",
    "CommandOrigin",
    "CommandRow",
    "DailyAggregate",
    "DeadLetter",
    "GatewayEvent",
    "GatewayStatusRow",
    "JobRun",
    "MeterState",
    "NotificationOutbox",
    "NotificationStatus",
    "ProcessedBatch",
    "ReadingHold",
    "ReadingRow",
    "ReadingStatus",
]


class ReadingStatus(StrEnum):
    BASELINE = "baseline"  # first reading of a meter: the start of billing, nothing charged
    BILLED = "billed"  # consumption since the last accepted reading charged
    ZERO = "zero"  # accepted, no consumption (nothing to charge)
    DUPLICATE = "duplicate"  # same meter time and registers as the last accepted one
    LATE = "late"  # older than the last accepted reading
    HELD = "held"  # anomaly: flagged for an operator, not billed
    NO_ACCOUNT = "no_account"  # accepted as the new baseline, but no open account pays for the meter
    NO_TARIFF = "no_tariff"  # held: no tariff in force for the meter
    UNKNOWN_METER = "unknown_meter"  # the gateway reports a meter the cloud does not know
    INFO = "info"  # no cumulative register (instantaneous values only)


class AlarmKind(StrEnum):
    READING_HELD = "reading_held"
    ARREARS = "arrears"
    COMMAND_ABANDONED = "command_abandoned"
    GATEWAY_OFFLINE = "gateway_offline"
    METER_OFFLINE = "meter_offline"
    COMMAND_REJECTED = "command_rejected"
    CONFIG_REJECTED = "config_rejected"  # a gateway refused a down/config: forged, stale, or a key problem
    LEDGER_MISMATCH = "ledger_mismatch"
    NO_TARIFF = "no_tariff"
    TOPUP_FAILED = "topup_failed"  # a local-prepay top-up not written, or written with another count
    METER_BALANCE_MISMATCH = "meter_balance_mismatch"  # a local-prepay meter's remaining money ≠ held:<meter>
    SETTINGS_INVALID = "settings_invalid"  # a stored project / tariff row is unusable: held on its own
    PROCESSING_FAILED = "processing_failed"  # one account, meter, gateway... raised: skipped on its own
    NOTICE_UNDELIVERABLE = "notice_undeliverable"  # every channel failed: a person must tell the tenant


class CommandOrigin(StrEnum):
    RECONCILER = "reconciler"  # desired vs observed
    OPERATOR = "operator"  # a person asked for it (audited)


class NotificationStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    DEAD = "dead"
    """Every channel failed or refused it after its attempts: an alarm asks a person to act."""
    FANNED_OUT = "fanned_out"
    """A manager notice handed on as one row per opted-in staff user (``user_id``); those are sent."""


class ReadingRow(SQLModel, table=True):
    """One reading as received; ``values`` keeps the decimals as strings (exact)."""

    __tablename__ = "reading"
    __table_args__ = (
        UniqueConstraint("gateway_id", "meter_device", "seq"),
        Index("ix_reading_meter_id_ts", "meter_id", "ts"),
    )

    id: int | None = Field(default=None, sa_type=BIG_ID, primary_key=True)
    gateway_id: int = Field(foreign_key="gateway.id")
    meter_device: str = Field(sa_type=String(64))
    meter_id: int | None = Field(default=None, foreign_key="meter.id")
    seq: int = Field(sa_type=BigInteger)
    ts: datetime = Field(sa_type=UTCDateTime)
    received_at: datetime = Field(sa_type=UTCDateTime)
    values: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    relay: str | None = Field(default=None, sa_type=String(16))
    status: str = Field(default=ReadingStatus.BILLED, sa_type=String(16))
    txn_key: str | None = Field(default=None, sa_type=String(200))
    """Idempotency key of the charge this reading produced, if any."""


class ReadingHold(SQLModel, table=True):
    """A reading that must not be billed until an operator decides."""

    __tablename__ = "reading_hold"

    id: int | None = Field(default=None, primary_key=True)
    reading_id: int = Field(sa_type=BIG_ID, foreign_key="reading.id", unique=True)
    meter_id: int = Field(foreign_key="meter.id", index=True)
    verdict: str = Field(sa_type=String(32))
    detail: str = Field(default="", sa_type=String(1000))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    resolved_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    resolution: str = Field(default="", sa_type=String(200))


class MeterState(SQLModel, table=True):
    """Per meter: the last accepted registers (billing baseline) and desired vs observed supply."""

    __tablename__ = "meter_state"

    meter_id: int = Field(foreign_key="meter.id", primary_key=True)
    last_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    """Meter time of the last accepted reading."""
    last_values: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    last_seq: int | None = Field(default=None, sa_type=BigInteger)
    rate_budget: Decimal | None = Field(default=None, sa_type=MicroDecimal)
    """What the meter may still bill beyond its rate at ``last_at``, in register units (None: full).
    See :mod:`cloud.domain.readings` (rate budget) and :mod:`cloud.domain.plausibility`."""
    last_seen: datetime | None = Field(default=None, sa_type=UTCDateTime)
    observed: str | None = Field(default=None, sa_type=String(16))
    observed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    protected_observed: bool | None = None
    desired: str | None = Field(default=None, sa_type=String(16))
    desired_reasons: list[str] = Field(default_factory=list, sa_type=JSON)
    desired_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    offline: bool = False


class AccountState(SQLModel, table=True):
    """Arrears bookkeeping of one account (the policy's memory between evaluations)."""

    __tablename__ = "account_state"

    account_id: int = Field(foreign_key="account.id", primary_key=True)
    arrears_since: datetime | None = Field(default=None, sa_type=UTCDateTime)
    alarm_level: int = 0
    final_notice_delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    re_evaluate_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    evaluated_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    reasons: list[str] = Field(default_factory=list, sa_type=JSON)


class GatewayStatusRow(SQLModel, table=True):
    """Last status a gateway reported (retained ``up/status`` or its LWT)."""

    __tablename__ = "gateway_status"

    gateway_id: int = Field(foreign_key="gateway.id", primary_key=True)
    online: bool = False
    version: str = Field(default="", sa_type=String(64))
    reported_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_seen: datetime | None = Field(default=None, sa_type=UTCDateTime)
    """Last time anything arrived from the gateway (status, readings, acks, events)."""
    uptime_s: int = 0
    outbox_backlog: int = 0
    outbox_oldest_age_s: int = 0
    autonomous: bool = False
    lines: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    offline_since: datetime | None = Field(default=None, sa_type=UTCDateTime)


class GatewayEvent(SQLModel, table=True):
    __tablename__ = "gateway_event"
    __table_args__ = (UniqueConstraint("gateway_id", "event_id"),)

    id: int | None = Field(default=None, sa_type=BIG_ID, primary_key=True)
    gateway_id: int = Field(foreign_key="gateway.id", index=True)
    event_id: str = Field(sa_type=String(64))
    ts: datetime = Field(sa_type=UTCDateTime)
    kind: str = Field(sa_type=String(32))
    meter_device: str | None = Field(default=None, sa_type=String(64))
    detail: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class CommandRow(SQLModel, table=True):
    """One attempt: a signed command with its own id (the gateway refuses an id twice)."""

    __tablename__ = "command"
    __table_args__ = (Index("ix_command_status_next_try_at", "status", "next_try_at"),)

    id: str = Field(sa_type=String(64), primary_key=True)
    org_id: int = Field(foreign_key="organisation.id", index=True)
    gateway_id: int = Field(foreign_key="gateway.id")
    meter_id: int = Field(foreign_key="meter.id", index=True)
    action: str = Field(sa_type=String(32))
    params: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    status: str = Field(sa_type=String(16))
    origin: str = Field(default=CommandOrigin.RECONCILER, sa_type=String(16))
    attempt: int = 1
    """1 for the first command towards a goal, +1 for each retry (each retry is a new row)."""
    previous_id: str | None = Field(default=None, sa_type=String(64))
    actor_user_id: int | None = Field(default=None, foreign_key="user_account.id")
    issued_at: datetime = Field(sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    next_try_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    """When the reconciler looks at this command again (expiry check, or retry after failure)."""
    acked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    ack_status: str | None = Field(default=None, sa_type=String(16))
    ack_observed: str | None = Field(default=None, sa_type=String(16))
    ack_detail: str = Field(default="", sa_type=String(500))
    payload: str = Field(default="", sa_type=String(4000))
    """The signed contract JSON, so a re-publish sends exactly the same bytes."""


class Alarm(SQLModel, table=True):
    __tablename__ = "alarm"

    id: int | None = Field(default=None, sa_type=BIG_ID, primary_key=True)
    org_id: int | None = Field(default=None, foreign_key="organisation.id", index=True)
    kind: str = Field(sa_type=String(32), index=True)
    level: int = 1
    dedupe_key: str = Field(sa_type=String(200), unique=True)
    meter_id: int | None = Field(default=None, foreign_key="meter.id")
    account_id: int | None = Field(default=None, foreign_key="account.id")
    gateway_id: int | None = Field(default=None, foreign_key="gateway.id")
    message_zh: str = Field(default="", sa_type=String(500))
    message_en: str = Field(default="", sa_type=String(500))
    detail: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    cleared_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    assigned_to: int | None = Field(default=None, foreign_key="user_account.id", index=True)
    """The member of staff the alarm was handed to (migration 0018; ``operations.assign_alarm``)."""
    assigned_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class NotificationOutbox(SQLModel, table=True):
    """A message for a tenant or manager, written with the change that caused it; sent by a notifier."""

    __tablename__ = "notification_outbox"

    id: int | None = Field(default=None, sa_type=BIG_ID, primary_key=True)
    org_id: int = Field(foreign_key="organisation.id", index=True)
    account_id: int | None = Field(default=None, foreign_key="account.id", index=True)
    kind: str = Field(sa_type=String(32))
    channel: str = Field(default="sms", sa_type=String(16))
    dedupe_key: str = Field(sa_type=String(200), unique=True)
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    status: str = Field(default=NotificationStatus.PENDING, sa_type=String(16), index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # the sender's bookkeeping (migration 0014, cloud/services/notify/)
    attempts: int = 0
    channel_pos: int = 0
    """Index of the channel being tried in the project's channel order (fallback moves it on)."""
    next_try_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    claimed_by: str = Field(default="", sa_type=String(64))
    claimed_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    """A claim is a lease: a replica that dies mid-send loses it when this passes."""
    last_error: str = Field(default="", sa_type=String(500))
    user_id: int | None = Field(default=None, foreign_key="user_account.id", index=True)
    """A manager notice's copy for one staff user (migration 0017); None: a tenant's or the original."""


class DeadLetter(SQLModel, table=True):
    """A message that could not be applied: its topic, why, and a bounded copy of its bytes (the first
    ``cloud.services.dead_letters.PREFIX_BYTES``, with the full size and SHA-256; migration 0010)."""

    __tablename__ = "dead_letter"

    id: int | None = Field(default=None, sa_type=BIG_ID, primary_key=True)
    topic: str = Field(sa_type=String(300))
    payload: bytes = Field(sa_type=LargeBinary)
    """The first bytes of the message only; ``payload_size`` says how many there were."""
    payload_size: int = Field(default=0, sa_type=BigInteger)
    payload_sha256: str = Field(default="", sa_type=String(64))
    reason: str = Field(sa_type=String(1000))
    gateway_device: str | None = Field(default=None, sa_type=String(64))
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)


class ProcessedBatch(SQLModel, table=True):
    __tablename__ = "processed_batch"
    __table_args__ = (UniqueConstraint("gateway_id", "batch"),)

    id: int | None = Field(default=None, sa_type=BIG_ID, primary_key=True)
    gateway_id: int = Field(foreign_key="gateway.id")
    batch: str = Field(sa_type=String(64))
    readings: int = 0
    new_readings: int = 0
    processed_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    runner: str = Field(default="", sa_type=String(100))


class JobRun(SQLModel, table=True):
    """A job's period, claimed in the same database transaction as the job's work."""

    __tablename__ = "job_run"
    __table_args__ = (UniqueConstraint("job", "period"),)

    id: int | None = Field(default=None, primary_key=True)
    job: str = Field(sa_type=String(64))
    period: str = Field(sa_type=String(64))
    runner: str = Field(default="", sa_type=String(100))
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    result: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)


class DailyAggregate(SQLModel, table=True):
    """Per meter (``account_id`` None) or per account (``meter_id`` None) and local day."""

    __tablename__ = "daily_aggregate"
    __table_args__ = (UniqueConstraint("day", "scope"),)

    id: int | None = Field(default=None, sa_type=BIG_ID, primary_key=True)
    day: date
    scope: str = Field(sa_type=String(40))
    """``meter:<id>`` or ``account:<id>`` (NULLs never collide in a UNIQUE, so no nullable key)."""
    meter_id: int | None = Field(default=None, foreign_key="meter.id", index=True)
    account_id: int | None = Field(default=None, foreign_key="account.id", index=True)
    opening: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    closing: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    opening_balance_fen: int | None = Field(default=None, sa_type=FEN)
    closing_balance_fen: int | None = Field(default=None, sa_type=FEN)
    charges_fen: int = Field(default=0, sa_type=FEN)
    recharges_fen: int = Field(default=0, sa_type=FEN)
    corrections_fen: int = Field(default=0, sa_type=FEN)
    readings: int = 0
