"""Late readings under tiered (阶梯) tariffs, through the ingest on SQLite and PostgreSQL.

Tier usage is kept per account and tier period (``tier_usage``); a late reading inside an interval
re-rates ``[start, late]`` and ``[late, end]`` on top of the account's usage without the interval, and
moves the usage of exactly the periods the split touches. Tiers everywhere: 0–200 kWh at 0.4883, 200–400 at 0.5383, above at 0.7883
yuan/kWh (48 830 / 53 830 / 78 830 milli-fen), reset monthly in Asia/Shanghai. Every figure below is
computed by hand in the comments; a fen figure is ``floor((residue + milli-fen) / 1000)``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.domain import ledger as dledger
from cloud.models import Account, LedgerTransaction, Meter, ReadingRow, Tariff, TariffVersion
from cloud.services import ledger
from cloud.services.ingest import Ingest
from tests.cloud.flowkit import T0, FlowSite, balance, batch, make_flow_site, tier_usage_of

TIERS = [
    {"upto": "200", "price": "0.4883"},
    {"upto": "400", "price": "0.5383"},
    {"upto": None, "price": "0.7883"},
]
DEARER = [
    {"upto": "200", "price": "0.5283"},
    {"upto": "400", "price": "0.5783"},
    {"upto": None, "price": "0.8283"},
]
MONTH_END = datetime(2026, 11, 30, 16, 0, tzinfo=UTC)  # 1 December 00:00 in Shanghai: the tiers reset
H = timedelta(hours=1)


def _tiered(
    factory: sessionmaker[Session], site: FlowSite, versions: list[tuple[datetime, list[Any]]]
) -> None:
    with factory() as s:
        tariff = Tariff(org_id=site.org_id, name="居民阶梯电价", kind="tiered")
        s.add(tariff)
        s.flush()
        assert tariff.id is not None
        for at, tiers in versions:
            spec = {"kind": "tiered", "tier_reset": "monthly", "tiers": tiers}
            s.add(TariffVersion(tariff_id=tariff.id, effective_from=at, spec=spec))
        s.execute(update(Meter).where(col(Meter.id) == site.meters["m1"]).values(tariff_id=tariff.id))
        s.commit()


def _ledger(factory: sessionmaker[Session], site: FlowSite) -> dict[str, tuple[str, int, dict[str, Any]]]:
    """key → (kind, amount on the wallet, meta) of every transaction but the recharge."""
    wallet = dledger.wallet_code(site.accounts["m1"])
    with factory() as s:
        assert ledger.check_balances(s).ok
        return {
            row.idempotency_key: (
                row.kind,
                ledger.load_transaction(s, row).amount_on(wallet),
                dict(row.details),
            )
            for row in s.scalars(select(LedgerTransaction))
            if row.kind != "recharge"
        }


def _counter(factory: sessionmaker[Session], site: FlowSite) -> tuple[dict[str, Decimal], int]:
    """The account's electricity usage per tier period, and its residue."""
    with factory() as s:
        account = s.get(Account, site.accounts["m1"])
        assert account is not None
        residue = account.residue_millifen
    return tier_usage_of(factory, site), residue


def _readings(factory: sessionmaker[Session]) -> dict[int, tuple[str, str | None]]:
    with factory() as s:
        return {r.seq: (r.status, r.txn_key) for r in s.scalars(select(ReadingRow))}


def test_a_late_reading_inside_one_month_changes_nothing(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory, balance_fen=50_000)
    _tiered(session_factory, site, [(T0 - timedelta(days=40), TIERS)])
    ingest = Ingest(session_factory, clock=lambda: T0 + 13 * H)
    gw = site.gateway
    ingest.handle(*batch(site, [("m1", 1, T0, "1000.00")]))  # 24 Nov 10:00: baseline
    # 150 kWh, all tier 1: 150 × 48 830 = 7 324 500 → 7324 fen, residue 500, counter 150
    ingest.handle(*batch(site, [("m1", 2, T0 + 6 * H, "1150.00")]))
    # 100 kWh crossing 200: 50 × 48 830 + 50 × 53 830 = 2 441 500 + 2 691 500 = 5 133 000
    # → 500 + 5 133 000 = 5133 fen, residue 500, counter 250
    ingest.handle(*batch(site, [("m1", 4, T0 + 12 * H, "1250.00")]))
    assert balance(session_factory, site) == 50_000 - 7324 - 5133
    before = _ledger(session_factory, site)
    kind, fen, meta = before[f"chg:{gw}:m1:4"]
    assert (kind, fen, meta["amount_milli"]) == ("charge", -5133, "5133000")
    assert (meta["tier_period"], Decimal(meta["tier_used"])) == ("2026-11", Decimal(150))
    assert _ledger(session_factory, site)[f"chg:{gw}:m1:2"][2]["tier_used"] == "0"  # nothing counted yet
    # late, 22:00 → 1220.00: [150 → 220] 50 × 48 830 + 20 × 53 830 = 3 518 100, [220 → 250]
    # 30 × 53 830 = 1 614 900: 5 133 000 again, counter 250 again: nothing to post
    ingest.handle(*batch(site, [("m1", 3, T0 + 9 * H, "1220.00")]))
    assert _ledger(session_factory, site) == before
    assert balance(session_factory, site) == 50_000 - 7324 - 5133
    assert _counter(session_factory, site) == ({"2026-11": Decimal(250)}, 500)
    assert _readings(session_factory)[3] == ("late", None)


def test_usage_moved_across_the_month_end_is_re_rated(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory, balance_fen=50_000)
    _tiered(session_factory, site, [(T0 - timedelta(days=40), TIERS)])
    ingest = Ingest(session_factory, clock=lambda: MONTH_END + 13 * H)
    gw = site.gateway
    ingest.handle(*batch(site, [("m1", 1, MONTH_END - 20 * H, "1000.00")]))  # 30 Nov 04:00: baseline
    # 30 Nov 14:00, 180 kWh tier 1: 180 × 48 830 = 8 789 400 → 8789 fen, residue 400, counter Nov 180
    ingest.handle(*batch(site, [("m1", 2, MONTH_END - 10 * H, "1180.00")]))
    # 1 Dec 10:00, 200 kWh over 20 h, pro rata 100 before midnight and 100 after:
    # Nov 180 → 280: 20 × 48 830 + 80 × 53 830 = 976 600 + 4 306 400 = 5 283 000
    # Dec 0 → 100: 100 × 48 830 = 4 883 000; total 10 166 000 → 10 166 fen, residue 400, counter Dec 100
    ingest.handle(*batch(site, [("m1", 4, MONTH_END + 10 * H, "1380.00")]))
    assert balance(session_factory, site) == 50_000 - 8789 - 10_166 == 31_045
    assert _counter(session_factory, site) == ({"2026-11": Decimal(280), "2026-12": Decimal(100)}, 400)

    # late, 30 Nov 22:00 → 1356.00: 176 of the 200 kWh were used in November
    # A [14:00, 22:00] from Nov 180: 20 × 48 830 + 156 × 53 830 = 976 600 + 8 397 480 = 9 374 080 → Nov 356
    # B [22:00, 10:00] 24 kWh, 2 h / 10 h pro rata: Nov 4 × 53 830 = 215 320, Dec 20 × 48 830 = 976 600
    #   = 1 191 920 → Dec 20
    # 10 566 000 − 10 166 000 = +400 000: carry(400, 400 000) = 400 fen, residue 400; 10 166 + 400 = 10 566
    # posted as A = 9374 fen and B = 10 566 − 9374 = 1192 fen
    late = batch(site, [("m1", 3, MONTH_END - 2 * H, "1356.00")])
    ingest.handle(*late)
    posted = _ledger(session_factory, site)
    assert posted[f"rev:chg:{gw}:m1:4"][:2] == ("reversal", 10_166)
    kind_a, fen_a, meta_a = posted[f"chg:{gw}:m1:3"]
    kind_b, fen_b, meta_b = posted[f"rr:{gw}:m1:4:3"]
    assert (kind_a, fen_a, meta_a["amount_milli"]) == ("charge", -9374, "9374080")
    assert (kind_b, fen_b, meta_b["amount_milli"]) == ("charge", -1192, "1191920")
    # each replacement keeps the counter it started from, so it can be re-rated in turn
    assert (meta_a["tier_period"], Decimal(meta_a["tier_used"])) == ("2026-11", Decimal(180))
    assert (meta_b["tier_period"], Decimal(meta_b["tier_used"])) == ("2026-11", Decimal(356))
    assert balance(session_factory, site) == 31_045 + 10_166 - 9374 - 1192 == 30_645
    # November counted 356 + 4 kWh, December 20 kWh before 10:00, not 100
    assert _counter(session_factory, site) == ({"2026-11": Decimal(360), "2026-12": Decimal(20)}, 400)
    statuses = _readings(session_factory)
    assert statuses[3] == ("billed", f"chg:{gw}:m1:3")
    assert statuses[4] == ("billed", f"rr:{gw}:m1:4:3")

    # redelivered, as the same message and inside another batch: nothing more
    ingest.handle(*late)
    ingest.handle(*batch(site, [("m1", 3, MONTH_END - 2 * H, "1356.00")]))
    assert _ledger(session_factory, site) == posted
    assert balance(session_factory, site) == 30_645
    assert _counter(session_factory, site) == ({"2026-11": Decimal(360), "2026-12": Decimal(20)}, 400)

    # the next reading rates from the corrected counter: 10 kWh from Dec 20 → 30
    # 10 × 48 830 = 488 300; 400 + 488 300 → 488 fen, residue 700
    ingest.handle(*batch(site, [("m1", 5, MONTH_END + 12 * H, "1390.00")]))
    meta_5 = _ledger(session_factory, site)[f"chg:{gw}:m1:5"][2]
    assert (meta_5["tier_period"], Decimal(meta_5["tier_used"])) == ("2026-12", Decimal(20))
    assert balance(session_factory, site) == 30_645 - 488 == 30_157
    assert _counter(session_factory, site) == ({"2026-11": Decimal(360), "2026-12": Decimal(30)}, 700)

    # a second late reading inside the replacement [22:00, 10:00], at midnight → 1376.00: 20 of its 24 kWh
    # were November's. Usage without the interval (Nov 4, Dec 20 pro rata): Nov 356, Dec 10 (seq 5's).
    # Whole on top of it: Nov 4 × 53 830 + Dec 20 × 48 830 = 1 191 920. A [22:00, 00:00] from Nov 356:
    # 20 × 53 830 = 1 076 600 → Nov 376; B [00:00, 10:00] from Dec 10: 4 × 48 830 = 195 320.
    # 1 271 920 − 1 191 920 = +80 000: carry(700, 80 000) = 80 fen, residue 700; 1192 + 80 = 1272 =
    # 1076 + 196. November 360 + 16 = 376, December 30 − 16 = 14
    ingest.handle(*batch(site, [("m1", 6, MONTH_END, "1376.00")]))
    again = _ledger(session_factory, site)
    assert again[f"rev:rr:{gw}:m1:4:3"][:2] == ("reversal", 1192)
    assert again[f"chg:{gw}:m1:6"][:2] == ("charge", -1076)
    assert again[f"rr:{gw}:m1:4:6"][:2] == ("charge", -196)
    assert len(again) == len(posted) + 1 + 3
    assert balance(session_factory, site) == 30_157 + 1192 - 1076 - 196 == 30_077
    assert _counter(session_factory, site) == ({"2026-11": Decimal(376), "2026-12": Decimal(14)}, 700)
    assert _readings(session_factory)[4] == ("billed", f"rr:{gw}:m1:4:6")


def test_a_tariff_change_inside_a_tiered_interval_is_re_rated(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory, balance_fen=50_000)
    # from 24 Nov 16:00 every tier is 0.04 dearer: 52 830 / 57 830 / 82 830
    _tiered(session_factory, site, [(T0 - timedelta(days=40), TIERS), (T0 + 6 * H, DEARER)])
    ingest = Ingest(session_factory, clock=lambda: T0 + 13 * H)
    gw = site.gateway
    ingest.handle(*batch(site, [("m1", 1, T0 - 4 * H, "1000.00")]))
    # 100 × 48 830 = 4 883 000 → 4883 fen, residue 0, counter 100
    ingest.handle(*batch(site, [("m1", 2, T0, "1100.00")]))
    # 160 kWh over 12 h, 80 under each version: old 100 → 180 80 × 48 830 = 3 906 400;
    # new 180 → 260: 20 × 52 830 + 60 × 57 830 = 1 056 600 + 3 469 800; total 8 432 800
    # → 8432 fen, residue 800, counter 260
    ingest.handle(*batch(site, [("m1", 4, T0 + 12 * H, "1260.00")]))
    assert balance(session_factory, site) == 50_000 - 4883 - 8432 == 36_685
    # the reading at the change arrives late: 140 kWh at the old prices, 20 at the new ones
    # A 100 → 240: 100 × 48 830 + 40 × 53 830 = 4 883 000 + 2 153 200 = 7 036 200
    # B 240 → 260: 20 × 57 830 = 1 156 600; 8 192 800 − 8 432 800 = −240 000:
    # carry(800, −240 000) = −240 fen, residue 800; 8432 − 240 = 8192 = 7036 + 1156
    late = batch(site, [("m1", 3, T0 + 6 * H, "1240.00")])
    ingest.handle(*late)
    posted = _ledger(session_factory, site)
    assert posted[f"rev:chg:{gw}:m1:4"][:2] == ("reversal", 8432)
    assert posted[f"chg:{gw}:m1:3"][:2] == ("charge", -7036)
    assert posted[f"rr:{gw}:m1:4:3"][:2] == ("charge", -1156)
    assert posted[f"rr:{gw}:m1:4:3"][2]["amount_milli"] == "1156600"
    assert balance(session_factory, site) == 36_685 + 240 == 36_925
    assert _counter(session_factory, site) == ({"2026-11": Decimal(260)}, 800)  # same month: usage stays
    ingest.handle(*late)
    assert _ledger(session_factory, site) == posted
    assert balance(session_factory, site) == 36_925


def test_a_charge_without_a_stored_tier_counter_is_re_rated_too(
    session_factory: sessionmaker[Session],
) -> None:
    """Re-rating reads tier usage from ``tier_usage``, not from the charge: one posted before charges
    recorded a counter is re-rated like any other (the figures of the tariff-change test above)."""
    site = make_flow_site(session_factory, balance_fen=50_000)
    _tiered(session_factory, site, [(T0 - timedelta(days=40), TIERS), (T0 + 6 * H, DEARER)])
    ingest = Ingest(session_factory, clock=lambda: T0 + 13 * H)
    gw = site.gateway
    ingest.handle(*batch(site, [("m1", 1, T0 - 4 * H, "1000.00")]))
    ingest.handle(*batch(site, [("m1", 2, T0, "1100.00")]))
    ingest.handle(*batch(site, [("m1", 4, T0 + 12 * H, "1260.00")]))
    # the ledger is append-only: swap the charge for one shaped as before (same money, no counter)
    wallet = dledger.wallet_code(site.accounts["m1"])
    with session_factory() as s:
        row = ledger.get_transaction(s, f"chg:{gw}:m1:4")
        assert row is not None
        old = ledger.load_transaction(s, row)
        ledger.post(s, dledger.reverse(old, "test: legacy shape", old.occurred_at), org_id=site.org_id)
        meta = {k: v for k, v in old.meta.items() if not k.startswith("tier_")}
        revenue = next(p.account for p in old.postings if p.account != wallet)
        legacy = dledger.charge("legacy:4", wallet, 8432, old.occurred_at, revenue=revenue, meta=meta)
        ledger.post(s, legacy, org_id=site.org_id)
        s.execute(update(ReadingRow).where(col(ReadingRow.seq) == 4).values(txn_key="legacy:4"))
        s.commit()
    ingest.handle(*batch(site, [("m1", 3, T0 + 6 * H, "1240.00")]))  # re-rates by −240 fen
    posted = _ledger(session_factory, site)
    assert posted["rev:legacy:4"][:2] == ("reversal", 8432)
    assert posted[f"chg:{gw}:m1:3"][:2] == ("charge", -7036)
    assert posted[f"rr:{gw}:m1:4:3"][:2] == ("charge", -1156)
    assert balance(session_factory, site) == 50_000 - 4883 - 8432 + 240
    assert _readings(session_factory)[3] == ("billed", f"chg:{gw}:m1:3")


def test_a_split_that_only_moves_the_counter_is_still_recorded(
    session_factory: sessionmaker[Session],
) -> None:
    """Same money, different counter: without a boundary a later charge would climb tiers too early."""
    site = make_flow_site(session_factory, balance_fen=50_000)
    _tiered(session_factory, site, [(T0 - timedelta(days=40), TIERS)])
    ingest = Ingest(session_factory, clock=lambda: MONTH_END + 11 * H)
    gw = site.gateway
    ingest.handle(*batch(site, [("m1", 1, MONTH_END - 10 * H, "1000.00")]))
    # 40 kWh over 20 h, 20 in November and 20 in December, all tier 1: 40 × 48 830 = 1 953 200
    # → 1953 fen, residue 200, counter Dec 20
    ingest.handle(*batch(site, [("m1", 3, MONTH_END + 10 * H, "1040.00")]))
    assert _counter(session_factory, site) == ({"2026-11": Decimal(20), "2026-12": Decimal(20)}, 200)
    # late, at midnight → 1036.00: Nov 36 × 48 830 = 1 757 880, Dec 4 × 48 830 = 195 320: 1 953 200,
    # the same money, but December has counted 4 kWh, not 20: reversal and 1757 + 196 fen
    ingest.handle(*batch(site, [("m1", 2, MONTH_END, "1036.00")]))
    posted = _ledger(session_factory, site)
    assert posted[f"rev:chg:{gw}:m1:3"][:2] == ("reversal", 1953)
    assert posted[f"chg:{gw}:m1:2"][:2] == ("charge", -1757)
    assert posted[f"rr:{gw}:m1:3:2"][:2] == ("charge", -196)
    assert balance(session_factory, site) == 50_000 - 1953
    assert _counter(session_factory, site) == ({"2026-11": Decimal(36), "2026-12": Decimal(4)}, 200)
    # a further late reading inside November's part, on the pro-rata line (18 kWh by 19:00): the
    # split is already a boundary, so nothing changes and the counter is not corrected twice
    ingest.handle(*batch(site, [("m1", 4, MONTH_END - 5 * H, "1018.00")]))
    assert _ledger(session_factory, site) == posted
    assert _counter(session_factory, site) == ({"2026-11": Decimal(36), "2026-12": Decimal(4)}, 200)
    assert _readings(session_factory)[4] == ("late", None)
