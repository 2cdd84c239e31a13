"""Local-prepay money flow in the ledger: the meter deducts consumption itself, so its readings are
never charged to the wallet but to ``held:<meter>``; a confirmed top-up moves its amount wallet →
``held:<meter>`` once (tests/cloud/test_local_prepay_lifecycle.py follows the money further)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.domain import ledger as rules
from cloud.models import (
    Account,
    Alarm,
    AlarmKind,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    MeterState,
    ReadingRow,
)
from cloud.services import ledger
from protocol.contract import AckStatus, Action
from tests.cloud.flowkit import T0, FlowSite, balance, batch, make_flow_site
from tests.cloud.test_topups import _setup, pay, reading_with_count, recharge_ack


def _wallet_charges(factory: sessionmaker[Session], account_id: int) -> int:
    with factory() as s:
        return int(
            s.scalar(
                select(func.count())
                .select_from(LedgerEntry)
                .join(LedgerTransaction, col(LedgerTransaction.id) == col(LedgerEntry.transaction_id))
                .where(col(LedgerEntry.account_id) == account_id, col(LedgerTransaction.kind) == "charge")
            )
            or 0
        )


def _held(factory: sessionmaker[Session], site: FlowSite, meter_id: int) -> int:
    with factory() as s:
        total = s.scalar(
            select(func.coalesce(func.sum(col(LedgerEntry.amount_fen)), 0))
            .join(LedgerAccount, col(LedgerAccount.id) == col(LedgerEntry.ledger_account_id))
            .where(
                col(LedgerAccount.org_id) == site.org_id,
                col(LedgerAccount.code) == rules.meter_held_code(meter_id),
            )
        )
        return int(total or 0)


def _statuses(factory: sessionmaker[Session], site: FlowSite) -> list[str]:
    with factory() as s:
        return list(
            s.scalars(
                select(col(ReadingRow.status))
                .where(col(ReadingRow.gateway_id) == site.gateway_id)
                .order_by(col(ReadingRow.seq))
            )
        )


def test_local_meter_readings_are_charged_to_the_meter_not_the_wallet(
    session_factory: sessionmaker[Session],
) -> None:
    site, _clock, _wire, _reconciler, ingest = _setup(session_factory)
    meter_id, account_id = site.meters["m1"], site.accounts["m1"]
    pay(session_factory, site, 5_000)
    ingest.handle(*reading_with_count(site, 1, T0, 3))  # 100.00 kWh: the baseline
    ingest.handle(*batch(site, [("m1", 2, T0 + timedelta(minutes=30), "101.50")]))
    assert _statuses(session_factory, site) == ["baseline", "billed"]
    assert _wallet_charges(session_factory, account_id) == 0
    assert balance(session_factory, site) == 5_000  # 1.5 kWh used, deducted by the meter, not the wallet
    assert _held(session_factory, site, meter_id) == -75  # 1.5 kWh × 0.5 yuan, spent from the meter
    with session_factory() as s:
        state = s.get(MeterState, meter_id)
        assert state is not None
        assert (state.last_seq, state.last_values["energy_total_kwh"]) == (2, "101.50")


def test_a_confirmed_top_up_moves_wallet_to_meter_once(session_factory: sessionmaker[Session]) -> None:
    site, clock, wire, reconciler, ingest = _setup(session_factory)
    meter_id, account_id = site.meters["m1"], site.accounts["m1"]
    ingest.handle(*reading_with_count(site, 1, T0, 3))
    pay(session_factory, site, 1_000)
    reconciler.react({account_id}, set())
    (cmd,) = wire.commands()
    assert cmd.action is Action.RECHARGE
    assert balance(session_factory, site) == 1_000
    assert _held(session_factory, site, meter_id) == 0  # not on the meter until the gateway says so
    ack = recharge_ack(site, cmd, AckStatus.DONE, "recharged 10.00 yuan, purchase count 4", clock.now)
    ingest.handle(*ack)
    ingest.handle(*ack)  # redelivered (QoS 1)
    reconciler.react({account_id}, {meter_id})
    assert balance(session_factory, site) == 0
    assert _held(session_factory, site, meter_id) == 1_000
    with session_factory() as s:
        posted = ledger.get_transaction(s, f"topup:{cmd.id}")
        assert posted is not None
        assert posted.kind == "transfer"
        transfers = s.scalar(
            select(func.count())
            .select_from(LedgerTransaction)
            .where(col(LedgerTransaction.org_id) == site.org_id, col(LedgerTransaction.kind) == "transfer")
        )
        assert transfers == 1
        report = ledger.check_balances(s, org_id=site.org_id)
        assert report.ok, report
        # the emptied wallet of an all-local account is no arrears: no low-balance alarm
        arrears = s.scalars(
            select(Alarm).where(col(Alarm.account_id) == account_id, col(Alarm.kind) == AlarmKind.ARREARS)
        ).all()
        assert arrears == []
        account = s.get(Account, account_id)
        assert account is not None
        assert account.balance_fen == 0
    # consumption after the top-up is spent from the meter's money, not the wallet
    ingest.handle(*batch(site, [("m1", 2, clock.now, "102.00")]))
    assert _statuses(session_factory, site) == ["baseline", "billed"]
    assert _wallet_charges(session_factory, account_id) == 0
    assert balance(session_factory, site) == 0
    assert _held(session_factory, site, meter_id) == 1_000 - 100  # 2 kWh × 0.5 yuan


def test_a_failed_top_up_leaves_the_money_in_the_wallet(session_factory: sessionmaker[Session]) -> None:
    site, clock, wire, reconciler, ingest = _setup(session_factory)
    meter_id, account_id = site.meters["m1"], site.accounts["m1"]
    ingest.handle(*reading_with_count(site, 1, T0, 3))
    pay(session_factory, site, 700)
    reconciler.react({account_id}, set())
    (cmd,) = wire.commands()
    ingest.handle(*recharge_ack(site, cmd, AckStatus.FAILED, "meter did not answer", clock.now))
    assert balance(session_factory, site) == 700
    assert _held(session_factory, site, meter_id) == 0


def test_remote_meter_is_still_charged(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory, balance_fen=10_000, price="0.5")
    _local, _clock, _wire, _reconciler, ingest = _setup(session_factory)
    account_id = site.accounts["m1"]
    ingest.handle(*batch(site, [("m1", 1, T0, "100.00")]))
    ingest.handle(*batch(site, [("m1", 2, T0 + timedelta(minutes=30), "110.00")]))
    assert _statuses(session_factory, site) == ["baseline", "billed"]
    assert _wallet_charges(session_factory, account_id) == 1
    assert balance(session_factory, site) == 10_000 - 500  # 10 kWh × 0.5 yuan
    with session_factory() as s:
        assert ledger.check_balances(s, org_id=site.org_id).ok
