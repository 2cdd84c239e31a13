"""Hypothesis: whatever mix of recharges, charges, corrections, refunds, reversals and replays goes
through the ledger service, the cached balance equals the sum of the stored entries, and both equal the
domain's in-memory reference journal."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session, sessionmaker

from cloud.domain.errors import InsufficientBalance
from cloud.domain.ledger import (
    Journal,
    Transaction,
    TxnKind,
    cash_code,
    charge,
    correction,
    recharge,
    refund,
    revenue_code,
    reverse,
    wallet_code,
)
from cloud.models import Account
from cloud.services import ledger

if TYPE_CHECKING:
    from conftest import Site

T0 = datetime(2026, 11, 1, tzinfo=UTC)
_counter = itertools.count()

amounts = st.integers(min_value=1, max_value=100_000)
operation = st.one_of(
    st.tuples(st.just("recharge"), amounts),
    st.tuples(st.just("charge"), amounts),
    st.tuples(st.just("correction"), st.integers(-50_000, 50_000).filter(bool)),
    st.tuples(st.just("refund"), amounts),
    st.tuples(st.just("reverse"), st.integers(0, 1000)),
    st.tuples(st.just("replay"), st.integers(0, 1000)),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(operation, min_size=1, max_size=12))
def test_balance_always_equals_sum_of_entries(
    session_factory: sessionmaker[Session],
    site_factory: Callable[[str, str], Site],
    ops: list[tuple[str, int]],
) -> None:
    n = next(_counter)
    site = site_factory(f"org-{n}", f"N-{n}")  # a fresh account per example
    wallet = wallet_code(site.account_id)
    journal = Journal()
    posted: list[Transaction] = []
    with session_factory() as session:
        for i, (kind, value) in enumerate(ops):
            at = T0 + timedelta(minutes=i)
            key = f"{n}-{i}"
            txn: Transaction | None = None
            if kind == "recharge":
                txn = recharge(key, wallet, value, at, source=cash_code(site.project_id))
            elif kind == "charge":
                txn = charge(key, wallet, value, at, revenue=revenue_code(site.project_id, "electric"))
            elif kind == "correction":
                txn = correction(
                    key, wallet, value, at, counter=f"adjustment:{site.project_id}", reason="人工调整"
                )
            elif kind == "refund":
                try:
                    txn = refund(
                        key,
                        wallet,
                        value,
                        at,
                        payout=cash_code(site.project_id),
                        balance_fen=journal.balance(wallet),
                        reason="退费",
                    )
                except InsufficientBalance:
                    continue
            elif kind == "reverse" and posted:
                target = posted[value % len(posted)]
                if target.kind is TxnKind.REVERSAL or journal.is_reversed(target.key):
                    continue
                txn = reverse(target, "冲正", at)
            elif kind == "replay" and posted:
                txn = posted[value % len(posted)]
            if txn is None:
                continue
            expected_new = journal.post(txn)
            result = ledger.post(session, txn, org_id=site.org_id)
            session.commit()
            assert result.created == expected_new
            if expected_new:
                posted.append(txn)
            account = session.get(Account, site.account_id)
            assert account is not None
            assert (
                account.balance_fen
                == ledger.account_balance(session, site.account_id)
                == journal.balance(wallet)
            )
        assert ledger.check_balances(session, org_id=site.org_id).ok
