"""Shared set-up for the ingest / billing / control tests: a site with a gateway, meters and money."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.domain import ledger as rules
from cloud.models import (
    Account,
    AccountMeter,
    CommandRow,
    Gateway,
    LedgerTransaction,
    Meter,
    Organisation,
    Project,
    ReadingRow,
    Tariff,
    TariffVersion,
    TierUsage,
)
from cloud.services import ledger
from cloud.services.unit import Publisher, unit_of_work
from protocol.contract import (
    FIRST_KID,
    Quantity,
    Reading,
    ReadingBatch,
    RelayState,
    SealedMessage,
    Topics,
    kind_of,
    seal_message,
)

KEY = "k" * 32
"""Every flow site's gateway key (kid k1)."""
T0 = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)  # Tuesday 10:00 in Shanghai: no friendly-hours block


@dataclass(frozen=True)
class FlowSite:
    org_id: int
    project_id: int
    gateway: str
    gateway_id: int
    meters: dict[str, int]  # device id -> meter id
    accounts: dict[str, int]  # device id -> account id
    prefix: str


def make_flow_site(
    factory: sessionmaker[Session],
    *,
    meters: int = 1,
    balance_fen: int = 10_000,
    price: str = "0.5",
    prefix: str = "mf/v1",
    gateway: str | None = None,
    org_name: str | None = None,
    key: str = KEY,
) -> FlowSite:
    """One organisation, a project that cuts at zero at any hour, a flat tariff, one account per meter."""
    gateway = gateway or f"gw-{uuid.uuid4().hex[:8]}"
    with factory() as s:
        org = Organisation(name=org_name or f"物业-{uuid.uuid4().hex[:6]}")
        s.add(org)
        s.flush()
        assert org.id is not None
        tariff = Tariff(org_id=org.id, name="居民电价", kind="flat")
        s.add(tariff)
        s.flush()
        assert tariff.id is not None
        s.add(
            TariffVersion(
                tariff_id=tariff.id,
                effective_from=T0 - timedelta(days=400),
                spec={"kind": "flat", "price": price},
            )
        )
        project = Project(
            org_id=org.id,
            name="一期",
            electric_tariff_id=tariff.id,
            friendly_start="00:00",
            friendly_end="00:00",
            no_cut_weekends=False,
            no_cut_holidays=False,
            require_final_notice=False,
            alarm1_fen=2000,
            alarm2_fen=500,
        )
        s.add(project)
        s.flush()
        assert project.id is not None
        gw = Gateway(org_id=org.id, project_id=project.id, device_id=gateway, signing_key=key)
        s.add(gw)
        s.flush()
        assert gw.id is not None
        meter_ids: dict[str, int] = {}
        account_ids: dict[str, int] = {}
        for i in range(meters):
            device = f"m{i + 1}"
            meter = Meter(org_id=org.id, gateway_id=gw.id, device_id=device, address=f"0000000000{i + 1:02d}")
            account = Account(org_id=org.id, project_id=project.id, number=f"A-{i + 1}")
            s.add_all([meter, account])
            s.flush()
            assert meter.id is not None
            assert account.id is not None
            s.add(AccountMeter(account_id=account.id, meter_id=meter.id, linked_at=T0 - timedelta(days=400)))
            meter_ids[device] = meter.id
            account_ids[device] = account.id
        s.commit()
        site = FlowSite(org.id, project.id, gateway, gw.id, meter_ids, account_ids, prefix)
    for device in site.accounts:
        if balance_fen:
            recharge(factory, site, device, balance_fen)
    return site


def recharge(
    factory: sessionmaker[Session],
    site: FlowSite,
    device: str,
    amount_fen: int,
    *,
    publish: Publisher | None = None,
    at: datetime = T0,
) -> None:
    account_id = site.accounts[device]
    with unit_of_work(factory, publish) as s:
        txn = rules.recharge(
            f"recharge:test:{uuid.uuid4().hex}",
            rules.wallet_code(account_id),
            amount_fen,
            at,
            source=rules.cash_code(site.project_id),
            receipt=uuid.uuid4().hex[:8],
        )
        ledger.post(s, txn, org_id=site.org_id)


def batch(
    site: FlowSite,
    readings: list[tuple[str, int, datetime, str]],
    *,
    batch_id: str | None = None,
    relay: RelayState | None = RelayState.CLOSED,
) -> tuple[str, bytes]:
    """``(meter, seq, ts, energy_total_kwh)`` tuples → (topic, payload) of one ReadingBatch."""
    msg = ReadingBatch(
        gateway=site.gateway,
        batch=batch_id or uuid.uuid4().hex,
        sent_at=max(ts for _, _, ts, _ in readings),
        readings=[
            Reading(meter=m, seq=seq, ts=ts, values={Quantity.ENERGY_TOTAL_KWH: Decimal(v)}, relay=relay)
            for m, seq, ts, v in readings
        ],
    )
    return sealed(site, msg)


def sealed(
    site: FlowSite, message: SealedMessage, *, key: str = KEY, kid: str = FIRST_KID
) -> tuple[str, bytes]:
    """``(topic, payload)`` of ``message`` sealed as the site's gateway seals it (for ``Ingest.handle``)."""
    topic = Topics(site.gateway, site.prefix).of(kind_of(message))
    return topic, seal_message(message, kid=kid, key=key.encode())


def balance(factory: sessionmaker[Session], site: FlowSite, device: str = "m1") -> int:
    with factory() as s:
        account = s.get(Account, site.accounts[device])
        assert account is not None
        assert ledger.account_balance(s, site.accounts[device]) == account.balance_fen
        return account.balance_fen


def tier_usage_of(
    factory: sessionmaker[Session], site: FlowSite, device: str = "m1", utility: str = "electric"
) -> dict[str, Decimal]:
    """The tier usage per period of ``device``'s account (``tier_usage`` rows; zero rows left out)."""
    with factory() as s:
        rows = s.scalars(
            select(TierUsage).where(
                col(TierUsage.account_id) == site.accounts[device], col(TierUsage.utility) == utility
            )
        )
        return {row.period: row.used for row in rows if row.used}


def count(factory: sessionmaker[Session], model: type, *where: object) -> int:
    with factory() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)  # type: ignore[arg-type]


def charges(factory: sessionmaker[Session]) -> int:
    return count(factory, LedgerTransaction, col(LedgerTransaction.kind) == "charge")


def readings(factory: sessionmaker[Session], site: FlowSite) -> int:
    return count(factory, ReadingRow, col(ReadingRow.gateway_id) == site.gateway_id)


def commands(factory: sessionmaker[Session], meter_id: int) -> list[CommandRow]:
    with factory() as s:
        return list(
            s.scalars(
                select(CommandRow)
                .where(col(CommandRow.meter_id) == meter_id)
                .order_by(col(CommandRow.issued_at))
            )
        )
