"""The demo's cloud: a fresh SQLite database, migrated and seeded to match :mod:`meterflow.demo_site`.

Seeding goes through the cloud's own services where they exist (admin user, account opening with its
wallet, cash recharge with a receipt) so the demo exercises the same code paths as production; the
hierarchy rows are plain inserts because nothing about them needs a rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.domain.plausibility import rate_for
from cloud.models import (
    Account,
    Building,
    CommandRow,
    Floor,
    Gateway,
    GatewayStatusRow,
    LedgerTransaction,
    Meter,
    MeterState,
    NotifySettings,
    Project,
    ReadingHold,
    ReadingRow,
    Role,
    Room,
    StaffContact,
    Tariff,
    TariffVersion,
    Tenant,
)
from cloud.services import accounts, users
from cloud.services.audit import Actor
from meterflow.demo_site import (
    ELECTRIC_PRICE_YUAN,
    GATEWAY_ID,
    ROOMS,
    SILENT_GATEWAY_ID,
    TIME_SCALE,
    WATER_PRICE_YUAN,
    DemoMeter,
    phone_of,
    signing_key,
)
from meterflow.demo_sms import DEMO_SIGN, MANAGER_PHONE, TEMPLATES

__all__ = ["ADMIN_USER", "MANAGER_USER", "CloudSnapshot", "SeededCloud", "seed_cloud", "snapshot"]

ORG_NAME = "示范物业 Demo Property Co."
ADMIN_USER = "demo-admin"
MANAGER_USER = "demo-manager"
"""The site's manager: their phone gets the manager notices (gateway offline, holds, top-ups)."""


@dataclass(frozen=True)
class SeededCloud:
    org_id: int
    project_id: int
    gateway_id: int
    admin_password: str
    meters: dict[str, int]  # device id -> meter id
    accounts: dict[str, int]  # account number -> account id
    account_of_meter: dict[str, str]  # device id -> account number


def _now() -> datetime:
    return datetime.now(UTC)


def seed_cloud(factory: sessionmaker[Session], *, key: str, admin_password: str) -> SeededCloud:
    """Organisation, project (friendly hours off), tariffs, building, rooms, tenants, accounts, money."""
    now = _now()
    with factory() as s:
        admin = users.create_admin(s, username=ADMIN_USER, password=admin_password, org_name=ORG_NAME)
        org_id = admin.org_id
        assert org_id is not None
        actor = Actor(user_id=admin.id, org_id=org_id, role=admin.role, username=ADMIN_USER)
        electric = Tariff(org_id=org_id, name="演示电价 demo electricity", kind="flat")
        water = Tariff(org_id=org_id, name="演示水价 demo water", kind="water")
        s.add_all([electric, water])
        s.flush()
        assert electric.id is not None
        assert water.id is not None
        since = now - timedelta(days=30)
        s.add(
            TariffVersion(
                tariff_id=electric.id,
                effective_from=since,
                spec={"kind": "flat", "price": ELECTRIC_PRICE_YUAN},
            )
        )
        s.add(TariffVersion(tariff_id=water.id, effective_from=since,
                            spec={"kind": "water", "price": WATER_PRICE_YUAN}))  # fmt: skip
        # Friendly hours disabled: start == end means no daily window; no weekend/holiday block — so
        # the demo's cut happens now, whatever the hour, but only after the final notice was
        # delivered (an SMS through the Aliyun simulator, its delivery report pulled by the
        # cloud/services/notify/ receipts; no quiet hours either).
        project = Project(
            org_id=org_id, name="阳光花园 Sunny Gardens", electric_tariff_id=electric.id,
            water_tariff_id=water.id, friendly_start="00:00", friendly_end="00:00",
            no_cut_weekends=False, no_cut_holidays=False, require_final_notice=True,
            alarm1_fen=500, alarm2_fen=100, credit_limit_fen=0, grace_period_s=0,
        )  # fmt: skip
        s.add(project)
        s.flush()
        assert project.id is not None
        s.add(NotifySettings(org_id=org_id, project_id=project.id, channels=["sms_aliyun", "log"],
                             sms_sign=DEMO_SIGN, templates=TEMPLATES,
                             quiet_start="00:00", quiet_end="00:00"))  # fmt: skip
        manager = users.create_user(s, username=MANAGER_USER, password=admin_password, role=Role.MANAGER,
                                    org_id=org_id, display_name="物业经理 site manager")  # fmt: skip
        assert manager.id is not None
        s.add(StaffContact(org_id=org_id, user_id=manager.id, phone=MANAGER_PHONE, lang="zh",
                           notices=["gateway_offline", "holds_waiting", "topup_failed"]))  # fmt: skip
        building = Building(project_id=project.id, name="1号楼 Building 1")
        s.add(building)
        s.flush()
        assert building.id is not None
        gateway = Gateway(org_id=org_id, project_id=project.id, device_id=GATEWAY_ID,
                          name="1号楼网关 building 1 gateway", signing_key=key)  # fmt: skip
        s.add(gateway)
        # building 2's gateway: installed, heard from once, silent for 20 minutes before the demo —
        # the offline check tells the manager (a manager notice through the SMS simulator)
        silent = Gateway(org_id=org_id, project_id=project.id, device_id=SILENT_GATEWAY_ID,
                         name="2号楼网关 building 2 gateway", signing_key=signing_key())  # fmt: skip
        s.add(silent)
        s.flush()
        assert gateway.id is not None
        assert silent.id is not None
        heard = now - timedelta(minutes=20)
        s.add(GatewayStatusRow(gateway_id=silent.id, online=True, reported_at=heard, last_seen=heard))
        floors: dict[str, int] = {}
        meter_ids: dict[str, int] = {}
        account_ids: dict[str, int] = {}
        account_of: dict[str, str] = {}
        for room in ROOMS:
            level = room.room[0]
            if level not in floors:
                floor = Floor(building_id=building.id, name=f"{level}F", level=int(level))
                s.add(floor)
                s.flush()
                assert floor.id is not None
                floors[level] = floor.id
            room_row = Room(floor_id=floors[level], name=room.room)
            s.add(room_row)
            s.flush()
            tenant = Tenant(org_id=org_id, name=room.tenant, room_id=room_row.id, phone=phone_of(room.room))
            s.add(tenant)
            s.flush()
            ids = [_add_meter(s, org_id, gateway.id, room_row.id, m) for m in room.meters]
            for m, meter_id in zip(room.meters, ids, strict=True):
                meter_ids[m.device_id] = meter_id
                account_of[m.device_id] = room.account
            account = accounts.open_account(
                s, actor, now, project_id=project.id, number=room.account, tenant_id=tenant.id, meter_ids=ids
            )
            assert account.id is not None
            account_ids[room.account] = account.id
            accounts.recharge_cash(s, actor, now, account_id=account.id, amount_fen=room.opening_fen,
                                   receipt_no=f"OPEN-{room.account}")  # fmt: skip
        s.commit()
        return SeededCloud(org_id, project.id, gateway.id, admin_password, meter_ids, account_ids, account_of)


def _add_meter(s: Session, org_id: int, gateway_id: int, room_id: int | None, m: DemoMeter) -> int:
    # The simulators run TIME_SCALE × real time and the gateway stamps readings with the wall clock, so
    # in one wall-clock hour a demo meter delivers TIME_SCALE hours of consumption: its plausible rate
    # (cloud.domain.plausibility) is its model's, TIME_SCALE times over, set as a manager would.
    fast = rate_for(m.model, m.kind, 1) * Decimal(str(TIME_SCALE))
    meter = Meter(
        org_id=org_id, gateway_id=gateway_id, device_id=m.device_id, room_id=room_id, kind=m.kind,
        protocol=m.protocol, model=m.model, line=m.line, address=m.address, circuit=m.circuit,
        max_rate_per_hour=fast, installed_at=_now() - timedelta(days=30),
    )  # fmt: skip
    s.add(meter)
    s.flush()
    assert meter.id is not None
    return meter.id


@dataclass
class CloudSnapshot:
    """What the cloud's database says right now (the demo prints it; the e2e test asserts on it)."""

    readings: int = 0
    readings_held: int = 0
    charges: int = 0
    balances_fen: dict[str, int] = field(default_factory=dict)  # account number -> balance
    energy_kwh: dict[str, str] = field(default_factory=dict)  # device id -> last billed register
    desired: dict[str, str | None] = field(default_factory=dict)  # device id -> desired supply
    observed: dict[str, str | None] = field(default_factory=dict)  # device id -> observed supply
    commands: list[tuple[str, str, str]] = field(default_factory=list)  # (device, action, status)
    issued: dict[tuple[str, str], datetime] = field(default_factory=dict)  # first (device, action)


def _count(s: Session, model: type, *where: object) -> int:
    return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)  # type: ignore[arg-type]


def snapshot(factory: sessionmaker[Session], seeded: SeededCloud) -> CloudSnapshot:
    device_of = {v: k for k, v in seeded.meters.items()}
    snap = CloudSnapshot()
    with factory() as s:
        snap.readings = _count(s, ReadingRow, col(ReadingRow.gateway_id) == seeded.gateway_id)
        snap.readings_held = _count(s, ReadingHold)
        snap.charges = _count(s, LedgerTransaction, col(LedgerTransaction.kind) == "charge")
        for account in s.scalars(select(Account).where(col(Account.org_id) == seeded.org_id)):
            snap.balances_fen[account.number] = account.balance_fen
        for state in s.scalars(select(MeterState).where(col(MeterState.meter_id).in_(device_of))):
            device = device_of[state.meter_id]
            value = state.last_values.get("energy_total_kwh") or state.last_values.get("flow_total_m3")
            if value is not None:
                snap.energy_kwh[device] = str(value)
            snap.desired[device] = state.desired
            snap.observed[device] = state.observed
        for command in s.scalars(
            select(CommandRow)
            .where(col(CommandRow.gateway_id) == seeded.gateway_id)
            .order_by(col(CommandRow.issued_at))
        ):
            device = device_of.get(command.meter_id, "?")
            snap.commands.append((device, command.action, command.status))
            snap.issued.setdefault((device, command.action), command.issued_at)
    return snap
