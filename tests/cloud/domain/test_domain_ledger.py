"""Ledger rules: balanced legs, idempotency, builders, reversal; hypothesis: balance == Σ entries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.domain.errors import (
    IdempotencyConflict,
    InsufficientBalance,
    LedgerError,
    MoneyError,
    UnbalancedTransaction,
)
from cloud.domain.ledger import (
    Journal,
    Posting,
    Transaction,
    TxnKind,
    balances,
    cash_code,
    charge,
    correction,
    meter_held_code,
    recharge,
    refund,
    revenue_code,
    reversal_key,
    reverse,
    settlement,
    settlement_code,
    transfer,
    wallet_code,
)
from cloud.domain.money import carry

T0 = datetime(2026, 11, 23, 8, tzinfo=UTC)
W, W2 = wallet_code(7), wallet_code(8)
CASH, REV, SETTLE = cash_code("p1"), revenue_code("p1", "electric"), settlement_code("p1")


def test_codes() -> None:
    assert (W, CASH, REV, SETTLE) == ("wallet:7", "cash:p1", "revenue:p1:electric", "settlement:p1")
    assert reversal_key("charge:m1:5") == "rev:charge:m1:5"
    assert meter_held_code(42) == "held:42"  # money a local-prepay meter holds (a suspense account)


def test_builders_post_balanced_legs() -> None:
    r = recharge("rc:1", W, 10000, T0, source=CASH, receipt="R-001")
    assert r.amount_on(W) == 10000
    assert r.amount_on(CASH) == -10000
    assert r.meta["receipt"] == "R-001"
    assert "R-001" in r.memo
    c = charge("ch:1", W, 2591, T0, revenue=REV, meta={"meter": "m1"})
    assert c.amount_on(W) == -2591
    assert c.amount_on(REV) == 2591
    assert c.meta["meter"] == "m1"
    f = refund("rf:1", W, 500, T0, payout=CASH, balance_fen=7409, reason="moving out")
    assert f.amount_on(W) == -500
    assert f.kind is TxnKind.REFUND
    k = correction("co:1", W, -300, T0, counter=REV, reason="meter misread")
    assert k.amount_on(W) == -300
    assert k.amount_on(REV) == 300
    t = transfer("tr:1", W, W2, 1000, T0, reason="meter replaced", meta={"old": "m1", "new": "m2"})
    assert t.amount_on(W2) == 1000
    s = settlement("st:1", W, -250, T0, settlement_account=SETTLE)
    assert s is not None
    assert s.amount_on(W) == 250
    assert s.amount_on(SETTLE) == -250
    assert settlement("st:2", W, 0, T0, settlement_account=SETTLE) is None
    assert r.amount_on("nobody") == 0


def test_builder_refusals() -> None:
    with pytest.raises(LedgerError):
        recharge("rc", W, 0, T0, source=CASH)
    with pytest.raises(LedgerError):
        charge("ch", W, -5, T0, revenue=REV)
    with pytest.raises(MoneyError):
        recharge("rc", W, 10.0, T0, source=CASH)  # type: ignore[arg-type]
    with pytest.raises(InsufficientBalance):
        refund("rf", W, 501, T0, payout=CASH, balance_fen=500, reason="x")
    with pytest.raises(LedgerError):
        refund("rf", W, 5, T0, payout=CASH, balance_fen=500, reason=" ")
    with pytest.raises(LedgerError):
        correction("co", W, 0, T0, counter=REV, reason="x")
    with pytest.raises(LedgerError):
        transfer("tr", W, W, 5, T0, reason="x")


def test_transaction_validation() -> None:
    with pytest.raises(UnbalancedTransaction, match="sum to 1"):
        Transaction("k", TxnKind.CHARGE, (Posting(W, -5), Posting(REV, 6)), T0)
    with pytest.raises(UnbalancedTransaction, match="two postings"):
        Transaction("k", TxnKind.CHARGE, (Posting(W, 0 + 1),), T0)
    with pytest.raises(LedgerError, match="zero"):
        Posting(W, 0)
    with pytest.raises(LedgerError, match="account code"):
        Posting("", 5)
    with pytest.raises(LedgerError, match="twice"):
        Transaction("k", TxnKind.CHARGE, (Posting(W, -5), Posting(W, 5)), T0)
    with pytest.raises(LedgerError, match="key"):
        Transaction("", TxnKind.CHARGE, (Posting(W, -5), Posting(REV, 5)), T0)
    with pytest.raises(LedgerError, match="key"):
        Transaction("x" * 129, TxnKind.CHARGE, (Posting(W, -5), Posting(REV, 5)), T0)
    with pytest.raises(LedgerError, match="timezone"):
        Transaction("k", TxnKind.CHARGE, (Posting(W, -5), Posting(REV, 5)), datetime(2026, 1, 1))
    with pytest.raises(LedgerError, match="must name"):
        Transaction("k", TxnKind.REVERSAL, (Posting(W, -5), Posting(REV, 5)), T0, memo="x")
    with pytest.raises(LedgerError, match="reason"):
        Transaction("k", TxnKind.CORRECTION, (Posting(W, -5), Posting(REV, 5)), T0)


def test_reverse_mirrors_and_is_idempotent_by_key() -> None:
    c = charge("ch:1", W, 2591, T0, revenue=REV)
    r = reverse(c, "late reading re-rated", T0 + timedelta(hours=1))
    assert r.key == "rev:ch:1"
    assert r.reverses == "ch:1"
    assert r.kind is TxnKind.REVERSAL
    assert r.amount_on(W) == 2591
    assert r.amount_on(REV) == -2591
    assert r.meta["reversed_kind"] == "charge"
    assert reverse(c, "again", T0).key == r.key
    with pytest.raises(LedgerError, match="is a reversal"):
        reverse(r, "undo", T0)
    with pytest.raises(LedgerError, match="reason"):
        reverse(c, "", T0)


def test_journal_idempotency() -> None:
    j = Journal()
    r = recharge("rc:1", W, 10000, T0, source=CASH)
    assert j.post(r) is True
    assert j.post(recharge("rc:1", W, 10000, T0 + timedelta(seconds=5), source=CASH)) is False
    with pytest.raises(IdempotencyConflict):
        j.post(recharge("rc:1", W, 9999, T0, source=CASH))
    with pytest.raises(LedgerError, match="unknown"):
        j.post(reverse(charge("ghost", W, 1, T0, revenue=REV), "x", T0))
    assert len(j) == 1
    assert j.balance(W) == 10000
    assert j.get("rc:1") == r
    assert not j.is_reversed("rc:1")
    j.post(reverse(r, "cash counted twice", T0))
    assert j.is_reversed("rc:1")
    assert j.balance(W) == 0
    assert balances(j.transactions) == {W: 0, CASH: 0}


# --- hypothesis: the balance always equals the sum of entries ------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("recharge"), st.integers(1, 100_000)),
        st.tuples(st.just("charge_milli"), st.integers(0, 5_000_000)),
        st.tuples(st.just("correction"), st.integers(-50_000, 50_000)),
        st.tuples(st.just("refund"), st.integers(1, 100_000)),
        st.tuples(st.just("reverse"), st.integers(0, 10_000)),
        st.tuples(st.just("replay"), st.integers(0, 10_000)),
        st.tuples(st.just("transfer"), st.integers(1, 50_000)),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_balance_always_equals_sum_of_entries(program: list[tuple[str, int]]) -> None:
    j = Journal()
    expected = 0  # the wallet balance computed independently of the ledger
    residue, charged_milli, posted_fen = 0, 0, 0
    at = T0
    for n, (op, value) in enumerate(program):
        at += timedelta(minutes=1)
        txn: Transaction | None = None
        if op == "recharge":
            txn = recharge(f"rc:{n}", W, value, at, source=CASH)
            expected += value
        elif op == "charge_milli":
            fen, residue = carry(residue, value)
            charged_milli += value
            posted_fen += fen
            if fen:
                txn = charge(f"ch:{n}", W, fen, at, revenue=REV)
                expected -= fen
        elif op == "correction" and value:
            txn = correction(f"co:{n}", W, value, at, counter=REV, reason="operator fix")
            expected += value
        elif op == "refund":
            balance = j.balance(W)
            if value > balance:
                with pytest.raises(InsufficientBalance):
                    refund(f"rf:{n}", W, value, at, payout=CASH, balance_fen=balance, reason="tenant left")
            else:
                txn = refund(f"rf:{n}", W, value, at, payout=CASH, balance_fen=balance, reason="tenant left")
                expected -= value
        elif op == "transfer" and j.balance(W) >= value:
            txn = transfer(f"tr:{n}", W, W2, value, at, reason="meter replaced")
            expected -= value
        elif op in ("reverse", "replay") and len(j):
            target = j.transactions[value % len(j)]
            if op == "replay":
                assert j.post(target) is False  # a redelivered transaction changes nothing
            elif target.kind is not TxnKind.REVERSAL and not j.is_reversed(target.key):
                txn = reverse(target, "correction", at)
                expected -= target.amount_on(W)
        if txn is not None:
            assert sum(p.amount_fen for p in txn.postings) == 0
            assert j.post(txn) is True
        sums = balances(j.transactions)
        assert j.balance(W) == sums.get(W, 0) == expected
        assert sum(sums.values()) == 0
    assert posted_fen * 1000 + residue == charged_milli


def test_batch_charge_sums_revenue_per_account_and_refuses_what_is_not_a_single_charge() -> None:
    from cloud.domain.ledger import charge_batch, reverse_line

    at = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
    a = charge("a", wallet_code(1), 5, at, revenue=revenue_code(1, "electric"))
    b = charge("b", wallet_code(2), 6, at + timedelta(minutes=3), revenue=revenue_code(1, "electric"))
    w = charge("w", wallet_code(3), 7, at, revenue=revenue_code(1, "water"))
    mixed = charge_batch("m", [a, b, w], memo="two utilities")
    assert sorted((p.account, p.amount_fen) for p in mixed.postings if p.amount_fen > 0) == [
        (revenue_code(1, "electric"), 11),
        (revenue_code(1, "water"), 7),
    ]
    assert mixed.occurred_at == at + timedelta(minutes=3)
    assert dict(mixed.meta) == {"lines": "3"}
    with pytest.raises(LedgerError, match="cannot be told apart"):  # two revenue accounts
        reverse_line(mixed, wallet_code(1), "rev:a", "late", at)
    with pytest.raises(LedgerError, match="no lines"):
        charge_batch("e", [], memo="none")
    top_up = recharge("r", wallet_code(1), 100, at, source=cash_code(1))
    with pytest.raises(LedgerError, match="not a single charge"):
        charge_batch("x", [a, top_up], memo="mixed kinds")
    with pytest.raises(LedgerError, match="posts twice"):  # a payer's second reading: next round
        charge_batch(
            "y", [a, charge("a2", wallet_code(1), 1, at, revenue=revenue_code(1, "electric"))], memo=""
        )
    batch = charge_batch("z", [a, b], memo="electric")
    with pytest.raises(LedgerError, match="no debit"):
        reverse_line(batch, wallet_code(9), "rev:q", "late", at)
    with pytest.raises(LedgerError, match="needs a reason"):
        reverse_line(batch, wallet_code(1), "rev:a", " ", at)
    with pytest.raises(LedgerError, match="not a charge"):
        reverse_line(top_up, wallet_code(1), "rev:r", "late", at)
