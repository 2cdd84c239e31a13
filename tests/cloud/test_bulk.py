"""The batch write path: charges written with COPY / executemany, ledger account ids cached per
connection and forgotten on rollback."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from cloud.domain import ledger as rules
from cloud.models import Account, LedgerAccount, LedgerEntry
from cloud.services import ledger
from cloud.services.billing import BillingCache, post_charges
from cloud.services.bulk import connection_cache
from tests.cloud.conftest import Site

T0 = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)


def _charge(site: Site, key: str, fen: int) -> rules.Transaction:
    return rules.charge(
        key,
        rules.wallet_code(site.account_id),
        fen,
        T0,
        revenue=rules.revenue_code(site.project_id, "electric"),
        meta={"seq": "1"},
    )


def test_charges_posted_in_bulk_move_balance_and_keep_the_ledger_balanced(
    session_factory: sessionmaker[Session], site: Site
) -> None:
    with session_factory() as session:
        posted = post_charges(
            session, [(site.org_id, _charge(site, f"bulk-{i}", 100 + i)) for i in range(3)], BillingCache()
        )
        session.commit()
    assert posted == 3
    with session_factory() as session:
        account = session.get(Account, site.account_id)
        assert account is not None
        assert account.balance_fen == -(100 + 101 + 102)
        assert ledger.account_balance(session, site.account_id) == account.balance_fen
        assert ledger.check_balances(session).ok
        assert session.scalar(select(func.count()).select_from(LedgerEntry)) == 6


def test_ids_of_ledger_accounts_created_in_work_that_rolled_back_are_not_reused(
    engine: Engine, session_factory: sessionmaker[Session], site: Site
) -> None:
    with session_factory() as session:
        post_charges(session, [(site.org_id, _charge(site, "undone", 500))], BillingCache())
        cached = connection_cache(session.connection(), "ledger_account_ids")
        assert len(cached) == 2  # the wallet and the revenue account, both created just now
        session.rollback()  # the ledger accounts are gone again, and so must their cached ids be
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(LedgerAccount)) == 0
        assert connection_cache(session.connection(), "ledger_account_ids") == {}
        post_charges(session, [(site.org_id, _charge(site, "kept", 500))], BillingCache())
        session.commit()
    with session_factory() as session:  # committed ids stay cached with the (one) pooled connection
        assert len(connection_cache(session.connection(), "ledger_account_ids")) == 2
        assert session.scalar(select(func.count()).select_from(LedgerAccount)) == 2
        assert ledger.check_balances(session).ok
        account = session.get(Account, site.account_id)
        assert account is not None
        assert account.balance_fen == -500
