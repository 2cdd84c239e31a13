"""Request and response bodies. Money travels as integer fen (``*_fen``) plus a display yuan string.

Money in a request is a JSON integer and nothing else: ``true``, ``"100"``, ``100.0`` and ``1e3``
(which JSON parsers read as a float) are refused with a 422 naming the field, rather than coerced,
so a client bug never moves a different amount than it meant. Every request body refuses NaN and
±Infinity anywhere in it (Python's JSON parser accepts them, and ``1e400`` reads as infinity).
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    computed_field,
    field_validator,
    model_validator,
)

from cloud.domain.arrears import MAX_SETTING_FEN, MAX_SETTING_SPAN
from cloud.domain.errors import PolicyError
from cloud.domain.localtime import MAX_ZONE_NAME, time_of_day, zone
from cloud.domain.money import fen_to_yuan
from cloud.services.projects import SettingError, check_settings

__all__ = [
    "AccountIn",
    "AccountOut",
    "AdjustIn",
    "AmountFen",
    "ApprovalOut",
    "BuildingIn",
    "CloseIn",
    "ClosingFigureIn",
    "DecisionIn",
    "EndOverlapIn",
    "EntryOut",
    "Fen",
    "FloorIn",
    "GatewayCreated",
    "GatewayIn",
    "GatewayKeyCreated",
    "GatewayKeyOut",
    "GatewayOut",
    "In",
    "LinkMeterIn",
    "LoginIn",
    "MeOut",
    "MeterIn",
    "MeterMoneyOut",
    "MeterOut",
    "MeterRateIn",
    "NamedOut",
    "NonNegativeFen",
    "OrganisationIn",
    "PasswordResetIn",
    "ProjectIn",
    "ProjectOut",
    "ProjectSettingsIn",
    "ProtectIn",
    "RechargeIn",
    "RefundIn",
    "ReplaceMeterIn",
    "ReplacedMeterOut",
    "ReverseIn",
    "RoomIn",
    "RotateKeyIn",
    "SignedAmountFen",
    "TenantIn",
    "TenantOut",
    "TokenOut",
    "TransactionOut",
    "UserIn",
    "UserOut",
    "UserStatusIn",
]


MAX_ID = 2**31 - 1
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
MAX_BALANCE_FEN = 10**12
MAX_OPERATION_FEN = 10_000_000
"""The largest single recharge, refund or adjustment: 100,000 元."""
Fen = Annotated[StrictInt, Field(ge=-MAX_BALANCE_FEN, le=MAX_BALANCE_FEN, description="integer fen")]
NonNegativeFen = Annotated[StrictInt, Field(ge=0, le=MAX_BALANCE_FEN, description="integer fen")]
AmountFen = Annotated[
    StrictInt, Field(gt=0, le=MAX_OPERATION_FEN, description="integer fen (1 yuan = 100 fen), positive")
]
SignedAmountFen = Annotated[
    StrictInt, Field(ge=-MAX_OPERATION_FEN, le=MAX_OPERATION_FEN, description="integer fen, signed")
]
Small = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
OnMeterFen = Annotated[StrictInt, Field(ge=0, le=MAX_BALANCE_FEN, description="integer fen")]
"""Money read off a meter: never negative (and never above what the ledger says it holds: 409)."""


def _zone_name(value: str) -> str:
    try:
        zone(value)
    except PolicyError as exc:
        raise ValueError(str(exc)) from exc
    return value


def _time_of_day(value: str) -> str:
    try:
        time_of_day(value)
    except PolicyError as exc:
        raise ValueError(str(exc)) from exc
    return value


ZoneName = Annotated[str, Field(min_length=1, max_length=MAX_ZONE_NAME), AfterValidator(_zone_name)]
"""A tzdata zone name (:func:`cloud.domain.localtime.zone`): what billing and the policy read back."""
TimeOfDay = Annotated[str, Field(min_length=5, max_length=5), AfterValidator(_time_of_day)]
"""``HH:MM`` from 00:00 to 23:59 (:func:`cloud.domain.localtime.time_of_day`)."""
SettingFen = Annotated[StrictInt, Field(ge=-MAX_SETTING_FEN, le=MAX_SETTING_FEN)]
"""An alarm threshold: ±100 million yuan at most (:data:`cloud.domain.arrears.MAX_SETTING_FEN`)."""


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


def no_nul(value: object) -> object:
    """PostgreSQL text cannot hold NUL: refuse it at the door (422), not in the database (500)."""
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("text must not contain NUL characters")
    return value


def finite(data: Any) -> Any:
    """Refuse NaN and ±Infinity anywhere in a parsed body (iteratively: nesting depth is the sender's)."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError("numbers must be finite: NaN and Infinity are not JSON")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return data


class In(BaseModel):
    """Base of request bodies: unknown fields, NUL characters and non-finite numbers are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    _no_nul = field_validator("*", mode="after")(no_nul)

    @model_validator(mode="before")
    @classmethod
    def _finite_numbers(cls, data: Any) -> Any:
        return finite(data)


_In = In


class LoginIn(_In):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - OAuth2 token type, not a secret
    expires_at: datetime


class MeOut(BaseModel):
    id: int
    username: str
    role: str
    org_id: int | None
    tenant_id: int | None


class OrganisationIn(_In):
    name: str = Field(min_length=1, max_length=200)


class NamedOut(_Out):
    id: int
    name: str


class ProjectIn(_In):
    """A project and its arrears policy. Every field is checked here, and the whole by building the
    domain :class:`cloud.domain.arrears.Policy` from it: what is accepted can be applied, so no row
    written through the API can stall the background work (docs/security.md, isolation)."""

    name: str = Field(min_length=1, max_length=200)
    org_id: Id | None = None
    timezone: ZoneName = "Asia/Shanghai"
    alarm1_fen: SettingFen = 2000
    alarm2_fen: SettingFen = 500
    alarm3_fen: SettingFen | None = None
    credit_limit_fen: Annotated[StrictInt, Field(ge=0, le=MAX_SETTING_FEN)] = 0
    grace_period_s: int = Field(default=0, ge=0, le=int(MAX_SETTING_SPAN.total_seconds()))
    friendly_start: TimeOfDay = "18:00"
    friendly_end: TimeOfDay = "09:00"
    no_cut_weekends: bool = True
    no_cut_holidays: bool = True

    @model_validator(mode="after")
    def _policy_applies(self) -> ProjectIn:
        try:
            check_settings(self.model_dump(exclude={"name", "org_id"}))
        except SettingError as exc:
            raise ValueError(str(exc)) from exc
        return self


class ProjectSettingsIn(_In):
    """``PATCH /projects/{id}``: only the fields sent change; the project's merged settings are checked
    as a whole by :func:`cloud.services.projects.check_settings` (as at creation) before anything is
    written. ``alarm3_fen: null`` removes the third level."""

    timezone: ZoneName | None = None
    alarm1_fen: SettingFen | None = None
    alarm2_fen: SettingFen | None = None
    alarm3_fen: SettingFen | None = None
    credit_limit_fen: Annotated[StrictInt, Field(ge=0, le=MAX_SETTING_FEN)] | None = None
    grace_period_s: int | None = Field(default=None, ge=0, le=int(MAX_SETTING_SPAN.total_seconds()))
    friendly_start: TimeOfDay | None = None
    friendly_end: TimeOfDay | None = None
    no_cut_weekends: bool | None = None
    no_cut_holidays: bool | None = None
    stale_after_s: int | None = Field(default=None, ge=1, le=int(MAX_SETTING_SPAN.total_seconds()))
    require_final_notice: bool | None = None


class ProjectOut(_Out):
    id: int
    org_id: int
    name: str
    timezone: str
    alarm1_fen: int
    alarm2_fen: int
    alarm3_fen: int | None
    credit_limit_fen: int
    grace_period_s: int
    friendly_start: str
    friendly_end: str
    no_cut_weekends: bool
    no_cut_holidays: bool
    stale_after_s: int
    require_final_notice: bool


class BuildingIn(_In):
    name: str = Field(min_length=1, max_length=200)


class FloorIn(_In):
    name: str = Field(min_length=1, max_length=100)
    level: Small = 0


class RoomIn(_In):
    name: str = Field(min_length=1, max_length=100)


class TenantIn(_In):
    name: str = Field(min_length=1, max_length=200)
    phone: str = Field(default="", max_length=32)
    room_id: Id | None = None
    org_id: Id | None = None


class TenantOut(_Out):
    id: int
    org_id: int
    name: str
    phone: str
    room_id: int | None


class GatewayIn(_In):
    device_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    name: str = Field(default="", max_length=200)
    project_id: Id | None = None
    org_id: Id | None = None


class GatewayOut(_Out):
    id: int
    org_id: int
    project_id: int | None
    device_id: str
    name: str


class GatewayCreated(GatewayOut):
    signing_key: str = Field(
        description="the gateway's HMAC key (key id k1); shown only once, configure it on the gateway"
    )
    signing_kid: str = Field(default="k1", description="the key's id (edge.toml gateway.signing_kid)")


class RotateKeyIn(_In):
    overlap_s: int = Field(
        default=86_400,
        ge=300,
        le=7 * 86_400,
        description="how long the gateway's older keys stay valid (5 minutes to 7 days; default 24 h)",
    )


class EndOverlapIn(_In):
    force: bool = Field(
        default=False,
        description="retire the older keys even though the gateway has not used the newest yet "
        "(cuts the gateway off until it has)",
    )


class GatewayKeyOut(_Out):
    kid: str
    created_at: datetime
    not_after: datetime | None = Field(description="the key is refused from then on (None: not retiring)")
    seen_at: datetime | None = Field(description="first message the gateway sealed with it")


class GatewayKeyCreated(GatewayKeyOut):
    secret: str = Field(description="shown only once: install it with `meterflow edge key install`")
    old_keys_retire_at: datetime = Field(description="end of the overlap for the gateway's older keys")


class MeterIn(_In):
    gateway_id: Id
    device_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:/\-]+$")
    address: str = Field(min_length=1, max_length=32)
    kind: Literal["electric", "water"] = "electric"
    protocol: Literal["dlt645", "modbus", "cjt188"] = "dlt645"
    prepay_mode: Literal["remote", "local"] = "remote"
    model: str = Field(default="", max_length=64)
    line: str = Field(default="", max_length=64)
    circuit: Small | None = None
    ct_ratio: int = Field(default=1, ge=1, le=100_000)
    room_id: Id | None = None
    protected: bool = False


class MeterOut(_Out):
    id: int
    org_id: int
    gateway_id: Id
    device_id: str
    room_id: int | None
    kind: str
    protocol: str
    model: str
    line: str
    address: str
    circuit: int | None
    ct_ratio: int
    max_rate_per_hour: Decimal | None
    prepay_mode: str
    protected: bool
    active: bool
    replaced_by_id: int | None


class MeterRateIn(_In):
    max_rate_per_hour: Decimal | None = Field(gt=0, le=100_000, decimal_places=6)
    """Billed side: kW for electricity, m³/h for water; null returns to the model's rated figure."""
    reason: str = Field(min_length=1, max_length=200)


class ReplaceMeterIn(_In):
    new_device_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:/\-]+$")
    new_address: str = Field(min_length=1, max_length=32)
    new_model: str | None = None
    reason: str = Field(default="meter replaced", max_length=200)
    final_remaining_fen: OnMeterFen | None = Field(
        default=None,
        description="a local-prepay meter: the money read off it (fen), 0 … what the ledger says it holds; "
        "finance and managers only (without it: the gateway's last reading, else the ledger's figure)",
    )


class MeterMoneyOut(BaseModel):
    """The money on a local-prepay meter leaving service: the figure, and whether it moved."""

    model_config = ConfigDict(from_attributes=True)
    meter_id: int
    figure_fen: int
    source: str = Field(description="entered, reading (the gateway's last remaining_yuan) or ledger")
    held_fen: int = Field(description="what the ledger said the meter held")
    read_fen: int | None
    read_at: datetime | None
    returned_fen: int | None = Field(description="moved back to the wallet; None while awaiting approval")
    approval_id: int | None = Field(description="a second person approves before the money moves")


class ReplacedMeterOut(MeterOut):
    money: MeterMoneyOut | None = None


class ClosingFigureIn(_In):
    remaining_fen: OnMeterFen = Field(description="the money read off the replaced meter (fen)")
    reason: str = Field(min_length=1, max_length=200)


class AccountIn(_In):
    project_id: Id
    number: str = Field(min_length=1, max_length=32)
    tenant_id: Id | None = None
    meter_ids: list[Id] = Field(default_factory=list)
    billing_mode: Literal["merged", "per_meter"] = "merged"
    protected: bool = False


class AccountOut(_Out):
    id: int
    org_id: int
    project_id: int
    tenant_id: int | None
    number: str
    status: str
    billing_mode: str
    balance_fen: int
    protected: bool
    opened_at: datetime
    closed_at: datetime | None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def balance_yuan(self) -> str:
        return str(fen_to_yuan(self.balance_fen))


class RechargeIn(_In):
    amount_fen: AmountFen
    receipt_no: str = Field(
        min_length=1,
        max_length=64,
        description="the cash receipt's number, or the bank's reference of a transfer: credited once "
        "per project and method",
    )
    method: Literal["cash", "bank_transfer"] = "cash"
    payer_name: str = Field(default="", max_length=64, description="who paid (a bank transfer's payer)")
    notes: str = Field(default="", max_length=200)


class RefundIn(_In):
    amount_fen: AmountFen
    reason: str = Field(min_length=1, max_length=200)
    request_id: str = Field(min_length=1, max_length=64, description="retrying with the same id refunds once")


class AdjustIn(_In):
    amount_fen: SignedAmountFen = Field(description="integer fen; positive credits the tenant")
    reason: str = Field(min_length=1, max_length=200)
    request_id: str = Field(min_length=1, max_length=64)


class ReverseIn(_In):
    key: str = Field(
        min_length=1, max_length=200, description="idempotency key of the transaction to reverse"
    )
    reason: str = Field(min_length=1, max_length=200)


class LinkMeterIn(_In):
    meter_id: Id


class ProtectIn(_In):
    protected: bool


class UserIn(_In):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=8, max_length=256)
    role: Literal["admin", "manager", "finance", "installer", "tenant"]
    org_id: Id | None = Field(default=None, description="platform admins only: the organisation")
    tenant_id: Id | None = Field(default=None, description="required for the tenant role")
    display_name: str = Field(default="", max_length=200)


class UserOut(_Out):
    id: int
    org_id: int | None
    username: str
    role: str
    display_name: str
    tenant_id: int | None
    active: bool


class CloseIn(_In):
    reason: str = Field(default="account closed", min_length=1, max_length=200)
    meter_remaining_fen: dict[Id, OnMeterFen] | None = Field(
        default=None,
        description="local-prepay meter id → the money read off it (fen), 0 … what the ledger says it holds",
    )


class TransactionOut(_Out):
    id: uuid.UUID
    idempotency_key: str
    kind: str
    memo: str
    receipt_no: str | None
    reverses_id: uuid.UUID | None
    effective_at: datetime
    created_at: datetime
    details: dict[str, Any] = Field(default_factory=dict, description="method, receipt, payer_name, ...")


class EntryOut(BaseModel):
    entry_id: int
    transaction_key: str
    kind: str
    memo: str
    amount_fen: int
    effective_at: datetime
    meter_id: int | None


class UserStatusIn(_In):
    reason: str = Field(min_length=1, max_length=200)


class PasswordResetIn(_In):
    password: str = Field(min_length=8, max_length=256)


class DecisionIn(_In):
    reason: str = Field(min_length=1, max_length=500, description="why (audited) / 审批意见")


class ApprovalOut(_Out):
    id: int
    org_id: int
    kind: str = Field(description="held_return, account_close, refund, adjustment")
    status: str = Field(description="pending, approved, rejected")
    amount_fen: int = Field(description="the largest sum the decision moves")
    account_id: int | None
    meter_id: int | None
    payload: dict[str, Any]
    message_zh: str
    message_en: str
    requested_by: int | None
    requested_at: datetime
    request_reason: str
    decided_by: int | None
    decided_at: datetime | None
    decision_reason: str


# --- commissioning: provisioning codes, gateway registration, meter assignment ---------------------


class ProvisioningCodeIn(_In):
    ttl_s: int = Field(
        default=86_400,
        ge=300,
        le=7 * 86_400,
        description="how long the code may be used (5 minutes to 7 days; default 24 h); it works once",
    )


class ProvisioningCodeOut(_Out):
    id: int
    project_id: int
    code: str = Field(description="shown once: give it to the installer for `meterflow edge register`")
    expires_at: datetime


class RegisterGatewayIn(_In):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$", description="gateway.id")
    name: str = Field(default="", max_length=200)


class ScannedMeterIn(_In):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:/\-]+$")
    line: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    protocol: Literal["dlt645", "modbus", "cjt188"]
    address: str = Field(min_length=1, max_length=16, pattern=r"^[0-9]+$")
    model: str = Field(default="", max_length=64, pattern=r"^[A-Za-z0-9_.\-]*$")
    circuit: int | None = Field(default=None, ge=0, le=255)
    kind: Literal["electric", "water"] = "electric"

    @model_validator(mode="after")
    def _address_fits_protocol(self) -> ScannedMeterIn:
        digits = {"dlt645": 12, "cjt188": 14}.get(self.protocol)
        if digits is not None and len(self.address) != digits:
            raise ValueError(f"address: a {self.protocol} address is {digits} digits, got {self.address!r}")
        if self.protocol == "modbus" and not 1 <= int(self.address) <= 247:
            raise ValueError(f"address: a Modbus unit id is 1..247, got {self.address!r}")
        return self


class RegisterIn(_In):
    code: str = Field(min_length=1, max_length=64)
    gateway: RegisterGatewayIn
    meters: list[ScannedMeterIn] = Field(default_factory=list, max_length=2048)


class RegisteredMeterOut(_Out):
    id: int
    device_id: str
    line: str
    protocol: str
    address: str


class RegisterOut(GatewayCreated):
    meters: list[RegisteredMeterOut]


class AssignIn(_In):
    room_id: Id | None = Field(description="the room the meter supplies; null takes it out (not polled)")


# --- views for newcomers: readings, balances that say whose, a recharge's new balance --------------


class ReadingOut(_Out):
    id: int
    meter_id: int | None
    meter_device: str
    seq: int
    ts: datetime
    received_at: datetime
    values: dict[str, str] = Field(description="register values as exact decimal strings, by quantity")
    relay: str | None
    status: str = Field(description="baseline (first reading), billed, zero, duplicate, late, held, …")


class NamedRef(BaseModel):
    id: int
    name: str


class BalanceMeterOut(BaseModel):
    id: int
    device_id: str
    kind: str
    room_id: int | None


class BalanceOut(AccountOut):
    """An account as ``GET /accounts`` shows it, with whose it is, where, and what it pays for."""

    tenant: NamedRef | None
    room: NamedRef | None
    meters: list[BalanceMeterOut]


class RechargeOut(TransactionOut):
    account_id: int
    amount_fen: int
    balance_fen: int = Field(description="the account's balance after this recharge (integer fen)")
    balance_yuan: str
