"""Finance resolves a difference of the WeChat Pay trade bill: with a reason, once, audited, only
their own organisation's; nothing else changes. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date

import httpx
from sqlalchemy import func, select
from sqlmodel import col

from cloud.models import AuditLog, LedgerTransaction, Organisation, PayConflict
from tests.cloud.payments.conftest import PayWorld


def _conflict(w: PayWorld, org_id: int | None, key: str) -> int:
    with w.factory() as s:
        row = PayConflict(org_id=org_id, bill_date=date(2026, 12, 6), kind="ours_missing", dedupe_key=key,
                          out_trade_no="MF-FOREIGN-01", transaction_id="4200999", their_fen=777)  # fmt: skip
        s.add(row)
        s.commit()
        assert row.id is not None
        return row.id


def _money_moves(w: PayWorld) -> int:
    with w.factory() as s:
        return int(s.scalar(select(func.count()).select_from(LedgerTransaction)) or 0)


def test_finance_resolves_a_conflict_once_with_a_reason(world: PayWorld) -> None:
    w = world
    with w.factory() as s:
        other = Organisation(name="别家物业")
        s.add(other)
        s.commit()
        other_org = other.id
    mine, theirs = _conflict(w, w.site.org_id, "c-mine"), _conflict(w, other_org, "c-theirs")
    finance, installer = w.staff("fin"), w.staff("inst", "installer")
    moves = _money_moves(w)
    url = f"{w.api}/payments/conflicts/{mine}/resolve"

    assert httpx.post(url, json={"reason": "已核对"}, headers=installer).status_code == 403
    r = httpx.post(url, json={"reason": ""}, headers=finance)
    assert r.status_code == 422
    assert "reason" in r.text
    assert httpx.post(url, json={"reason": "x" * 501}, headers=finance).status_code == 422
    other_url = f"{w.api}/payments/conflicts/{theirs}/resolve"
    assert httpx.post(other_url, json={"reason": "不是我们的"}, headers=finance).status_code == 404

    r = httpx.post(url, json={"reason": "付款人已线下退款 777 分"}, headers=finance)
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["note"]) == ("resolved", "付款人已线下退款 777 分")
    again = httpx.post(url, json={"reason": "再次"}, headers=finance)
    assert again.status_code == 409
    with w.factory() as s:
        row = s.get(PayConflict, mine)
        assert row is not None
        assert (row.status, row.resolved_by is not None, row.resolved_at is not None) == ("resolved", True, True)
        assert row.note == "付款人已线下退款 777 分"  # the second try changed nothing
        untouched = s.get(PayConflict, theirs)
        assert untouched is not None
        assert untouched.status == "open"
        audit = s.scalars(
            select(AuditLog).where(col(AuditLog.action) == "pay_conflict_resolved")
        ).one()
        assert (audit.target_type, audit.target_id) == ("pay_conflict", str(mine))
        assert audit.detail["their_fen"] == 777
    assert _money_moves(w) == moves  # resolving records a decision; it moves no money
    listed = httpx.get(f"{w.api}/payments/conflicts", headers=finance).json()
    assert [(c["id"], c["status"]) for c in listed] == [(mine, "resolved")]
