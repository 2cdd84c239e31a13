"""Core tables: who owns what, who pays, what it costs, and the ledger where the money lives.

Hierarchy: organisation (property company) → project → building → floor → room. Gateways and meters
belong to an organisation; a meter sits in a room and behind a gateway, identified on the wire by
``(gateway.device_id, meter.device_id)`` — the contract ids. Tenants hold accounts; an account pays for
one meter or several (``billing_mode`` merged or per-meter) through ``account_meter`` links.

Ledger (double entry, append-only, integer fen): a ``ledger_transaction`` groups ``ledger_entry`` legs
whose signed ``amount_fen`` sum to zero. The database refuses anything else (triggers in migration
0001; on PostgreSQL checked once per statement since 0003): entries are inserted first, then the
transaction row, whose insert checks that its legs exist, number ``entry_count`` and sum to zero; an
entry whose transaction never arrives fails the deferred foreign key at commit; no entry may be added
to a closed transaction; updates and deletes of both tables are refused. Write the ledger only
through :mod:`cloud.services.ledger`.

Sign convention: a leg's amount is what it adds to the balance of its ledger account as the tenant
sees it; a tenant account's ``balance_fen`` is the sum of the legs on its ledger account (a cache
rebuilt and checked by the reconciliation job).

Enumerated values are stored as short strings (no database enum types), checked by the StrEnums here.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Connection,
    ForeignKey,
    Index,
    String,
    UniqueConstraint,
    Uuid,
    event,
)
from sqlmodel import Field, SQLModel

from cloud.models.base import BIG_ID, FEN, MicroDecimal, UTCDateTime, utcnow
from protocol.contract import FIRST_KID

__all__ = [
    "Account",
    "AccountMeter",
    "AccountStatus",
    "Approval",
    "ApprovalStatus",
    "AuditLog",
    "BillingMode",
    "Building",
    "Floor",
    "Gateway",
    "GatewayKey",
    "Holiday",
    "HolidayKind",
    "LedgerAccount",
    "LedgerAccountKind",
    "LedgerEntry",
    "LedgerTransaction",
    "Meter",
    "MeterKind",
    "MeterProtocol",
    "Organisation",
    "PrepayMode",
    "Project",
    "ProvisioningCode",
    "Role",
    "Room",
    "Tariff",
    "TariffKind",
    "TariffVersion",
    "Tenant",
    "TierUsage",
    "User",
]


class MeterKind(StrEnum):
    ELECTRIC = "electric"
    WATER = "water"


class MeterProtocol(StrEnum):
    DLT645 = "dlt645"
    MODBUS = "modbus"
    CJT188 = "cjt188"


class PrepayMode(StrEnum):
    REMOTE = "remote"  # the cloud holds the balance and trips/closes the relay
    LOCAL = "local"  # the meter holds its own balance; the cloud writes top-ups to it


class AccountStatus(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class BillingMode(StrEnum):
    MERGED = "merged"  # one balance pays for all linked meters
    PER_METER = "per_meter"  # the account pays for exactly one meter


class TariffKind(StrEnum):
    FLAT = "flat"
    TOU = "tou"  # 尖峰平谷
    TIERED = "tiered"  # 阶梯
    WATER = "water"


class LedgerAccountKind(StrEnum):
    TENANT = "tenant"  # prepaid balance of one account (a liability of the property company)
    CASH = "cash"  # money received (cash desk, bank, payment provider)
    REVENUE = "revenue"  # energy and water sold
    ADJUSTMENT = "adjustment"  # manual corrections and write-offs
    SUSPENSE = "suspense"  # money in transit (refunds payable, settlement of a closed account)


class HolidayKind(StrEnum):
    HOLIDAY = "holiday"  # statutory day off
    WORKDAY = "workday"  # 调休: a weekend day worked
    NORMAL = "normal"  # override cancelling a built-in entry of the statutory calendar


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"  # decided, and the money moved in the same database transaction
    REJECTED = "rejected"  # decided: nothing moved


class Role(StrEnum):
    ADMIN = "admin"
    MANAGER = "manager"
    FINANCE = "finance"
    INSTALLER = "installer"
    TENANT = "tenant"


# --- hierarchy ---------------------------------------------------------------------------------------


class Organisation(SQLModel, table=True):
    """A property company; the unit of data isolation."""

    __tablename__ = "organisation"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_type=String(200), unique=True)
    timezone: str = Field(default="Asia/Shanghai", sa_type=String(64))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Project(SQLModel, table=True):
    """A site (estate, dorm, mall) with its own arrears policy and default tariffs."""

    __tablename__ = "project"
    __table_args__ = (UniqueConstraint("org_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    org_id: int = Field(foreign_key="organisation.id", index=True)
    name: str = Field(sa_type=String(200))
    timezone: str = Field(default="Asia/Shanghai", sa_type=String(64))
    electric_tariff_id: int | None = Field(default=None, foreign_key="tariff.id")
    water_tariff_id: int | None = Field(default=None, foreign_key="tariff.id")
    # arrears policy (evaluated by cloud.domain.arrears)
    alarm1_fen: int = Field(default=2000, sa_type=FEN)
    alarm2_fen: int = Field(default=500, sa_type=FEN)
    alarm3_fen: int | None = Field(default=None, sa_type=FEN)
    credit_limit_fen: int = Field(default=0, sa_type=FEN)
    """How far below zero a balance may go before supply is cut (0 = cut at zero)."""
    grace_period_s: int = 0
    friendly_start: str = Field(default="18:00", sa_type=String(5))
    """Start of the daily window without automatic cuts, local time ``HH:MM``."""
    friendly_end: str = Field(default="09:00", sa_type=String(5))
    no_cut_weekends: bool = True
    no_cut_holidays: bool = True
    stale_after_s: int = 3 * 3600
    """No cut when the newest reading of the meter is older than this."""
    require_final_notice: bool = True
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Building(SQLModel, table=True):
    __tablename__ = "building"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    name: str = Field(sa_type=String(200))


class Floor(SQLModel, table=True):
    __tablename__ = "floor"
    __table_args__ = (UniqueConstraint("building_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    building_id: int = Field(foreign_key="building.id", index=True)
    name: str = Field(sa_type=String(100))
    level: int = 0


class Room(SQLModel, table=True):
    __tablename__ = "room"
    __table_args__ = (UniqueConstraint("floor_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    floor_id: int = Field(foreign_key="floor.id", index=True)
    name: str = Field(sa_type=String(100))


# --- devices -----------------------------------------------------------------------------------------


class Gateway(SQLModel, table=True):
    """An edge gateway; ``device_id`` is its contract id.

    Its signing keys live in ``gateway_key`` (read them through :mod:`cloud.services.keys`).
    ``signing_key`` is only the slot a new gateway's first key is given in: when the row is inserted,
    the key moves to ``gateway_key`` as kid ``k1`` and the column is blanked (:func:`_first_key`), so
    no secret is kept in two places and code that creates gateways needs nothing else.
    """

    __tablename__ = "gateway"

    id: int | None = Field(default=None, primary_key=True)
    org_id: int = Field(foreign_key="organisation.id", index=True)
    project_id: int | None = Field(default=None, foreign_key="project.id", index=True)
    device_id: str = Field(sa_type=String(64), unique=True)
    name: str = Field(default="", sa_type=String(200))
    signing_key: str = Field(default="", sa_type=String(128))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    config_version: int = Field(default=0, sa_type=BigInteger)
    """Version of the last GatewayConfig issued for it; each new config takes the next one."""


class GatewayKey(SQLModel, table=True):
    """One HMAC key of a gateway, by key id; several during a rotation's overlap.

    A key is valid until ``not_after`` (None: not being retired). ``seen_at`` records the first
    message the gateway sealed with it: the cloud signs down with the newest key the gateway has been
    seen using, so a gateway that has not got a rotated key yet keeps obeying during the overlap.
    """

    __tablename__ = "gateway_key"
    __table_args__ = (UniqueConstraint("gateway_id", "kid"),)

    id: int | None = Field(default=None, primary_key=True)
    gateway_id: int = Field(foreign_key="gateway.id", index=True)
    kid: str = Field(sa_type=String(32))
    secret: str = Field(sa_type=String(128), repr=False)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    not_after: datetime | None = Field(default=None, sa_type=UTCDateTime)
    seen_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


@event.listens_for(Gateway, "after_insert")
def _first_key(_mapper: Any, connection: Connection, target: Gateway) -> None:
    """A new gateway's ``signing_key`` becomes its key ``k1`` in ``gateway_key``; the column is blanked."""
    if not target.signing_key:
        return
    keys, gateways = GatewayKey.__table__, Gateway.__table__  # type: ignore[attr-defined]
    connection.execute(
        keys.insert().values(
            gateway_id=target.id, kid=FIRST_KID, secret=target.signing_key, created_at=target.created_at
        )
    )
    connection.execute(gateways.update().where(gateways.c.id == target.id).values(signing_key=""))


class Meter(SQLModel, table=True):
    """A prepaid meter (electric relay or water valve) behind a gateway."""

    __tablename__ = "meter"
    __table_args__ = (UniqueConstraint("gateway_id", "device_id"),)

    id: int | None = Field(default=None, primary_key=True)
    org_id: int = Field(foreign_key="organisation.id", index=True)
    gateway_id: int = Field(foreign_key="gateway.id", index=True)
    device_id: str = Field(sa_type=String(64))
    """The contract meter id under its gateway (``Reading.meter``)."""
    room_id: int | None = Field(default=None, foreign_key="room.id", index=True)
    kind: str = Field(default=MeterKind.ELECTRIC, sa_type=String(16))
    protocol: str = Field(default=MeterProtocol.DLT645, sa_type=String(16))
    model: str = Field(default="", sa_type=String(64))
    line: str = Field(default="", sa_type=String(64))
    """Name of the gateway's RS-485 line the meter is on."""
    address: str = Field(sa_type=String(32))
    circuit: int | None = None
    ct_ratio: int = Field(default=1, ge=1)
    """Current-transformer ratio: register kWh × ct_ratio = billed kWh."""
    max_rate_per_hour: Decimal | None = Field(default=None, sa_type=MicroDecimal)
    """Set by a manager: the most this supply can deliver per hour, billed side (kW, or m³/h for
    water). None: the model's rated figure (:mod:`cloud.domain.plausibility`)."""
    prepay_mode: str = Field(default=PrepayMode.REMOTE, sa_type=String(16))
    protected: bool = False
    """保电: never cut automatically."""
    tariff_id: int | None = Field(default=None, foreign_key="tariff.id")
    """Overrides the project's default tariff for this meter's kind."""
    active: bool = True
    installed_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    removed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    replaced_by_id: int | None = Field(default=None, foreign_key="meter.id")


class ProvisioningCode(SQLModel, table=True):
    """A one-time code an installer types into ``meterflow edge register`` to enrol a gateway.

    Created by a manager or installer for a project; only a SHA-256 of the code is stored (the code
    is shown once), it works once (``used_at``, ``gateway_id``) and not after ``expires_at``.
    """

    __tablename__ = "provisioning_code"

    id: int | None = Field(default=None, primary_key=True)
    org_id: int = Field(foreign_key="organisation.id", index=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    code_sha256: str = Field(sa_type=String(64), unique=True)
    created_by: int | None = Field(default=None, foreign_key="user_account.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    gateway_id: int | None = Field(default=None, foreign_key="gateway.id")


# --- tenants and accounts ----------------------------------------------------------------------------


class Tenant(SQLModel, table=True):
    __tablename__ = "tenant"

    id: int | None = Field(default=None, primary_key=True)
    org_id: int = Field(foreign_key="organisation.id", index=True)
    name: str = Field(sa_type=String(200))
    phone: str = Field(default="", sa_type=String(32))
    room_id: int | None = Field(default=None, foreign_key="room.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Account(SQLModel, table=True):
    """A prepaid account; ``balance_fen`` caches the sum of its ledger legs."""

    __tablename__ = "account"
    __table_args__ = (UniqueConstraint("org_id", "number"),)

    id: int | None = Field(default=None, primary_key=True)
    org_id: int = Field(foreign_key="organisation.id", index=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    tenant_id: int | None = Field(default=None, foreign_key="tenant.id", index=True)
    number: str = Field(sa_type=String(32))
    status: str = Field(default=AccountStatus.OPEN, sa_type=String(16))
    billing_mode: str = Field(default=BillingMode.MERGED, sa_type=String(16))
    balance_fen: int = Field(default=0, sa_type=FEN)
    residue_millifen: int = Field(default=0, sa_type=BigInteger)
    """Rating remainder below one fen, carried to the next charge (0 ≤ residue < 1000)."""
    protected: bool = False
    credit_limit_fen: int | None = Field(default=None, sa_type=FEN)
    """Overrides the project's credit limit."""
    opened_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    closed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    version: int = 0
    """Bumped on every balance change; lets readers detect concurrent changes."""


class TierUsage(SQLModel, table=True):
    """What an account used toward its tiers in one tier period, per utility (migration 0013).

    阶梯 is per household and per period: every electricity meter of the account counts toward the
    electricity row of the period its consumption falls in, water apart. One row per period (not one
    counter of "the current period"), so a meter whose reading still belongs partly to last month —
    late, offline, or simply processed after another meter's — is tiered by last month's usage, and a
    re-rating corrects exactly the periods it touches (:mod:`cloud.services.billing`)."""

    __tablename__ = "tier_usage"

    account_id: int = Field(foreign_key="account.id", primary_key=True)
    utility: str = Field(sa_type=String(16), primary_key=True)
    """``electric`` or ``water``."""
    period: str = Field(sa_type=String(16), primary_key=True)
    """``2026-11`` (monthly tiers) or ``2026`` (yearly), in the project's time zone."""
    used: Decimal = Field(default=Decimal(0), sa_type=MicroDecimal)
    """Units (kWh or m³, after the CT ratio) counted in the period."""


class AccountMeter(SQLModel, table=True):
    """Which meters an account pays for, over time (a link ends on unlink or meter replacement)."""

    __tablename__ = "account_meter"

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="account.id", index=True)
    meter_id: int = Field(foreign_key="meter.id", index=True)
    linked_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    unlinked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


# --- tariffs -----------------------------------------------------------------------------------------


class Tariff(SQLModel, table=True):
    __tablename__ = "tariff"
    __table_args__ = (UniqueConstraint("org_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    org_id: int = Field(foreign_key="organisation.id", index=True)
    name: str = Field(sa_type=String(200))
    kind: str = Field(default=TariffKind.FLAT, sa_type=String(16))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class TariffVersion(SQLModel, table=True):
    """One effective-dated version; ``spec`` is the domain tariff serialised as JSON."""

    __tablename__ = "tariff_version"
    __table_args__ = (UniqueConstraint("tariff_id", "effective_from"),)

    id: int | None = Field(default=None, primary_key=True)
    tariff_id: int = Field(foreign_key="tariff.id", index=True)
    effective_from: datetime = Field(sa_type=UTCDateTime)
    spec: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    created_by: int | None = Field(default=None, foreign_key="user_account.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


# --- ledger ------------------------------------------------------------------------------------------


class LedgerAccount(SQLModel, table=True):
    """A ledger account, named by a string ``code`` unique within the organisation."""

    __tablename__ = "ledger_account"
    __table_args__ = (UniqueConstraint("org_id", "code"),)

    id: int | None = Field(default=None, primary_key=True)
    org_id: int = Field(foreign_key="organisation.id", index=True)
    code: str = Field(sa_type=String(64))
    kind: str = Field(sa_type=String(16))
    name: str = Field(default="", sa_type=String(200))
    account_id: int | None = Field(default=None, foreign_key="account.id", unique=True)
    """The prepaid account whose balance this ledger account holds (tenant kind only)."""
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class LedgerTransaction(SQLModel, table=True):
    """A balanced group of legs; inserted after its legs (see the module docstring)."""

    __tablename__ = "ledger_transaction"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    org_id: int = Field(foreign_key="organisation.id", index=True)
    idempotency_key: str = Field(sa_type=String(200), unique=True)
    kind: str = Field(sa_type=String(32))
    memo: str = Field(default="", sa_type=String(500))
    receipt_no: str | None = Field(default=None, sa_type=String(64))
    reverses_id: uuid.UUID | None = Field(default=None, foreign_key="ledger_transaction.id", unique=True)
    """The transaction this one reverses (at most one reversal per transaction)."""
    actor_user_id: int | None = Field(default=None, foreign_key="user_account.id")
    entry_count: int = Field(ge=2)
    effective_at: datetime = Field(sa_type=UTCDateTime, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    details: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)


class LedgerEntry(SQLModel, table=True):
    """One leg: a signed amount on one ledger account."""

    __tablename__ = "ledger_entry"
    __table_args__ = (Index("ix_ledger_entry_ledger_account_id_id", "ledger_account_id", "id"),)

    id: int | None = Field(default=None, sa_type=BIG_ID, primary_key=True)
    transaction_id: uuid.UUID = Field(
        sa_column=Column(
            Uuid,
            ForeignKey("ledger_transaction.id", deferrable=True, initially="DEFERRED"),
            nullable=False,
            index=True,
        )
    )
    ledger_account_id: int = Field(foreign_key="ledger_account.id")
    amount_fen: int = Field(sa_type=FEN)
    account_id: int | None = Field(default=None, foreign_key="account.id", index=True)
    """The prepaid account, when the leg is on a tenant ledger account (fast balance sums)."""
    meter_id: int | None = Field(default=None, foreign_key="meter.id")


# --- calendar, users, audit --------------------------------------------------------------------------


class Holiday(SQLModel, table=True):
    """Overrides of the built-in PRC calendar (cloud.domain.calendar): holidays, 调休 workdays, cancels."""

    __tablename__ = "holiday"
    __table_args__ = (UniqueConstraint("region", "day"),)

    id: int | None = Field(default=None, primary_key=True)
    region: str = Field(default="CN", sa_type=String(16))
    day: date
    kind: str = Field(default=HolidayKind.HOLIDAY, sa_type=String(16))
    name: str = Field(default="", sa_type=String(100))


class User(SQLModel, table=True):
    """A console/API user. ``org_id`` None only for platform administrators."""

    __tablename__ = "user_account"

    id: int | None = Field(default=None, primary_key=True)
    org_id: int | None = Field(default=None, foreign_key="organisation.id", index=True)
    username: str = Field(sa_type=String(64), unique=True)
    password_hash: str = Field(sa_type=String(255))
    role: str = Field(sa_type=String(16))
    display_name: str = Field(default="", sa_type=String(200))
    tenant_id: int | None = Field(default=None, foreign_key="tenant.id")
    """For the tenant role: whose accounts this user may see."""
    active: bool = True
    token_version: int = 0
    """Bumped to revoke every token issued before (password change, lock)."""
    failed_logins: int = 0
    locked_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class AuditLog(SQLModel, table=True):
    """Who did what: remote control, tariff changes, refunds, manual adjustments, logins."""

    __tablename__ = "audit_log"

    id: int | None = Field(default=None, sa_type=BIG_ID, primary_key=True)
    org_id: int | None = Field(default=None, foreign_key="organisation.id", index=True)
    user_id: int | None = Field(default=None, foreign_key="user_account.id")
    action: str = Field(sa_type=String(64), index=True)
    target_type: str = Field(default="", sa_type=String(32))
    target_id: str = Field(default="", sa_type=String(64))
    detail: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    ip: str = Field(default="", sa_type=String(64))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)


class Approval(SQLModel, table=True):
    """Four eyes: a money movement one user asked for, waiting for a second, different user.

    ``kind`` names what approving does with ``payload`` (:mod:`cloud.services.approvals`); nothing has
    moved while it is pending, and the decision is taken once (approved: the money moved in the same
    database transaction; rejected: it never will under this row)."""

    __tablename__ = "approval"

    id: int | None = Field(default=None, primary_key=True)
    org_id: int = Field(foreign_key="organisation.id", index=True)
    kind: str = Field(sa_type=String(32))
    status: str = Field(default=ApprovalStatus.PENDING, sa_type=String(16), index=True)
    amount_fen: int = Field(sa_type=FEN)
    """The largest sum the decision moves (what the approval limit is compared with)."""
    account_id: int | None = Field(default=None, foreign_key="account.id", index=True)
    meter_id: int | None = Field(default=None, foreign_key="meter.id")
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    message_zh: str = Field(default="", sa_type=String(500))
    message_en: str = Field(default="", sa_type=String(500))
    requested_by: int | None = Field(default=None, foreign_key="user_account.id")
    requested_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    request_reason: str = Field(default="", sa_type=String(500))
    decided_by: int | None = Field(default=None, foreign_key="user_account.id")
    decided_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    decision_reason: str = Field(default="", sa_type=String(500))
