"""Account flows through the service layer on both engines: open/close with settlement, cash recharge
with receipt number, refund, correction by reversal, meter replacement, organisation isolation."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.domain.errors import InsufficientBalance, LedgerError
from cloud.domain.ledger import charge, revenue_code, wallet_code
from cloud.models import Account, AuditLog, Gateway, Meter, TierUsage
from cloud.services import accounts, ledger
from cloud.services.audit import Actor
from cloud.services.errors import Conflict, NotFound
from cloud.services.unit import unit_of_work

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import Site

NOW = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, name: str, payload: dict[str, Any]) -> None:
        self.seen.append((name, payload))


def _meters(factory: sessionmaker[Session], site: Site, n: int = 2) -> list[int]:
    with factory() as session:
        gw = Gateway(
            org_id=site.org_id,
            project_id=site.project_id,
            device_id=f"gw-{site.org_id}",
            signing_key="k" * 32,
        )
        session.add(gw)
        session.flush()
        assert gw.id is not None
        meters = [
            Meter(org_id=site.org_id, gateway_id=gw.id, device_id=f"m{i}", address=f"00000000000{i}")
            for i in range(n)
        ]
        session.add_all(meters)
        session.commit()
        return [m.id for m in meters if m.id is not None]


def _manager(site: Site) -> Actor:
    return Actor(user_id=None, org_id=site.org_id, role="manager", username="mgr")


def _open(factory: sessionmaker[Session], site: Site, meter_ids: list[int], number: str = "B-1") -> int:
    with unit_of_work(factory) as session:
        account = accounts.open_account(
            session, _manager(site), NOW, project_id=site.project_id, number=number, meter_ids=meter_ids
        )
        assert account.id is not None
        return account.id


def _account(factory: sessionmaker[Session], account_id: int) -> Account:
    with factory() as session:
        account = session.get(Account, account_id)
        assert account is not None
        assert account.balance_fen == ledger.account_balance(session, account_id)
        return account


def test_open_account_links_meters_once(session_factory: sessionmaker[Session], site: Site) -> None:
    m0, m1 = _meters(session_factory, site)
    account_id = _open(session_factory, site, [m0])
    with unit_of_work(session_factory) as session, pytest.raises(Conflict, match="already belongs"):
        accounts.open_account(
            session, _manager(site), NOW, project_id=site.project_id, number="B-2", meter_ids=[m0]
        )
    with unit_of_work(session_factory) as session, pytest.raises(Conflict, match="exactly one"):
        accounts.open_account(
            session,
            _manager(site),
            NOW,
            project_id=site.project_id,
            number="B-3",
            meter_ids=[m0, m1],
            billing_mode="per_meter",
        )
    with session_factory() as session:
        assert [m.id for m in accounts.active_meters(session, account_id)] == [m0]


def test_cash_recharge_by_receipt_is_credited_once_and_announced(
    session_factory: sessionmaker[Session], site: Site
) -> None:
    (m0,) = _meters(session_factory, site, 1)
    account_id = _open(session_factory, site, [m0])
    events = Events()
    for _ in range(2):
        with unit_of_work(session_factory, events) as session:
            accounts.recharge_cash(
                session, _manager(site), NOW, account_id=account_id, amount_fen=10_000, receipt_no="SJ-0001"
            )
    assert _account(session_factory, account_id).balance_fen == 10_000
    assert events.seen == [("balance_changed", {"account_id": account_id})]
    with unit_of_work(session_factory, events) as session, pytest.raises(Conflict, match="receipt"):
        accounts.recharge_cash(
            session, _manager(site), NOW, account_id=account_id, amount_fen=1, receipt_no=" "
        )
    with session_factory() as session:
        audit = session.scalars(select(AuditLog).where(col(AuditLog.action) == "recharge")).all()
        assert [a.detail["receipt_no"] for a in audit] == ["SJ-0001"]


def test_refund_is_bounded_by_balance_and_idempotent(
    session_factory: sessionmaker[Session], site: Site
) -> None:
    account_id = _open(session_factory, site, [])
    with unit_of_work(session_factory) as session:
        accounts.recharge_cash(
            session, _manager(site), NOW, account_id=account_id, amount_fen=5_000, receipt_no="R1"
        )
    with unit_of_work(session_factory) as session, pytest.raises(InsufficientBalance):
        accounts.refund(session, _manager(site), NOW, account_id=account_id, amount_fen=5_001, reason="退租")
    for _ in range(2):
        with unit_of_work(session_factory) as session:
            accounts.refund(
                session,
                _manager(site),
                NOW,
                account_id=account_id,
                amount_fen=3_000,
                reason="退租",
                request_id="rq-1",
            )
    assert _account(session_factory, account_id).balance_fen == 2_000
    with session_factory() as session:
        audit = session.scalars(select(AuditLog).where(col(AuditLog.action) == "refund")).all()
        assert len(audit) == 1
        assert audit[0].detail["amount_fen"] == 3_000


def test_correction_by_reversal_and_adjustment(session_factory: sessionmaker[Session], site: Site) -> None:
    account_id = _open(session_factory, site, [])
    with unit_of_work(session_factory) as session:
        wrong = charge(
            "charge:x", wallet_code(account_id), 4_321, NOW, revenue=revenue_code(site.project_id, "electric")
        )
        ledger.post(session, wrong, org_id=site.org_id)
    assert _account(session_factory, account_id).balance_fen == -4_321
    for _ in range(2):
        with unit_of_work(session_factory) as session:
            accounts.reverse_transaction(session, _manager(site), NOW, key="charge:x", reason="表计读数错误")
    assert _account(session_factory, account_id).balance_fen == 0
    with unit_of_work(session_factory) as session, pytest.raises(LedgerError, match="reversal"):
        accounts.reverse_transaction(session, _manager(site), NOW, key="rev:charge:x", reason="again")
    with unit_of_work(session_factory) as session:
        accounts.adjust(
            session,
            _manager(site),
            NOW,
            account_id=account_id,
            amount_fen=-150,
            reason="补收",
            request_id="adj-1",
        )
    assert _account(session_factory, account_id).balance_fen == -150
    with session_factory() as session:
        actions = sorted(a.action for a in session.scalars(select(AuditLog)))
        assert actions.count("reversal") == 1
        assert actions.count("adjustment") == 1


@pytest.mark.parametrize("balance", [2_500, -700])
def test_close_settles_whole_balance(
    session_factory: sessionmaker[Session], site: Site, balance: int
) -> None:
    (m0,) = _meters(session_factory, site, 1)
    account_id = _open(session_factory, site, [m0])
    with unit_of_work(session_factory) as session:
        accounts.adjust(
            session,
            _manager(site),
            NOW,
            account_id=account_id,
            amount_fen=balance,
            reason="期初",
            request_id="o",
        )
    events = Events()
    with unit_of_work(session_factory, events) as session:
        result = accounts.close_account(session, _manager(site), NOW, account_id=account_id).settlement
        assert result is not None
        assert result.transaction.kind == "settlement"
    account = _account(session_factory, account_id)
    assert (account.status, account.balance_fen, account.closed_at) == ("closed", 0, NOW)
    assert events.seen == [("balance_changed", {"account_id": account_id})]
    with session_factory() as session:
        assert accounts.active_meters(session, account_id) == []
        settlement = ledger.account_balance(session, account_id)
        assert settlement == 0
        assert ledger.check_balances(session).ok
    with unit_of_work(session_factory) as session, pytest.raises(Conflict, match="closed"):
        accounts.recharge_cash(
            session, _manager(site), NOW, account_id=account_id, amount_fen=100, receipt_no="R9"
        )
    # the meter is free again for the next tenant
    _open(session_factory, site, [m0], number="B-next")


def test_meter_replacement_keeps_balance_and_tier_counter(
    session_factory: sessionmaker[Session], site: Site
) -> None:
    (m0,) = _meters(session_factory, site, 1)
    account_id = _open(session_factory, site, [m0])
    with unit_of_work(session_factory) as session:
        accounts.recharge_cash(
            session, _manager(site), NOW, account_id=account_id, amount_fen=8_800, receipt_no="R1"
        )
        account = session.get(Account, account_id)
        assert account is not None
        account.residue_millifen = 321
        session.add(
            TierUsage(account_id=account_id, utility="electric", period="2026-11", used=Decimal("187.5"))
        )
    with unit_of_work(session_factory) as session:
        new = accounts.replace_meter(
            session, _manager(site), NOW, meter_id=m0, new_device_id="m0-b", new_address="000000000099"
        ).meter
        new_id = new.id
    with unit_of_work(session_factory) as session, pytest.raises(Conflict):
        accounts.replace_meter(
            session, _manager(site), NOW, meter_id=m0, new_device_id="m0-c", new_address="1"
        )
    account = _account(session_factory, account_id)
    assert (account.balance_fen, account.residue_millifen) == (8_800, 321)
    with session_factory() as session:  # the household's tier usage belongs to the account, not the meter
        usage = session.get(TierUsage, (account_id, "electric", "2026-11"))
        assert usage is not None
        assert usage.used == Decimal("187.5")
    with session_factory() as session:
        assert [m.id for m in accounts.active_meters(session, account_id)] == [new_id]
        old = session.get(Meter, m0)
        assert old is not None
        assert (old.active, old.replaced_by_id) == (False, new_id)


def test_other_organisation_sees_nothing(
    session_factory: sessionmaker[Session], site: Site, site_factory: Callable[[str, str], Site]
) -> None:
    other = site_factory("物业B", "X-1")
    intruder = Actor(user_id=None, org_id=other.org_id, role="manager")
    with unit_of_work(session_factory) as session:
        with pytest.raises(NotFound):
            accounts.get_account(session, site.account_id, intruder)
        with pytest.raises(NotFound):
            accounts.recharge_cash(
                session, intruder, NOW, account_id=site.account_id, amount_fen=1, receipt_no="Z"
            )
        with pytest.raises(NotFound):
            accounts.open_account(session, intruder, NOW, project_id=site.project_id, number="evil")
