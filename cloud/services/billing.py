"""Billing: one stored reading → validation → rating with the tariff in force → a ledger charge.

The flow of one reading (:func:`bill_reading`, and :func:`_rerate` for a late one); its parts live
along the data flow: tariffs are loaded by :mod:`cloud.services.tariff_loading`, what an interval
costs or why a reading is held is decided by :mod:`cloud.services.rating`, and ledger rows are
written by :mod:`cloud.services.ledger` alone (``post``, and ``post_charges`` for a batch).

Runs inside the ingest's database transaction, after the reading row was inserted (so a redelivered
reading never gets here twice). Per meter, ``meter_state`` holds the last *accepted* registers: the
billing baseline. A new reading is judged against it by :func:`cloud.domain.readings.check_reading`:

- ``ok`` → the register deltas (× the meter's CT ratio) are rated by :func:`cloud.domain.tariffs.rate`
  over ``[baseline time, reading time]`` with the paying account's tier usage of the periods it
  touches (:mod:`cloud.services.tier_usage`); milli-fen go
  through :func:`cloud.domain.money.carry` with the account's residue, and whole fen are posted as one
  ``charge`` transaction whose idempotency key is derived from the reading identity
  ``chg:<gateway>:<meter>:<seq>`` (returned, and written for the whole batch at once by
  :func:`cloud.services.ledger.post_charges`); the reading becomes the new baseline;
- a held verdict (reset, negative, spike, rate limit, clock far off, rollover unless auto-accepted) →
  a ``reading_hold`` row and an alarm; nothing billed and the baseline stays where it was, so the
  consumption is billed once an operator resolves it or the meter reports plausibly again. The hold
  and the alarm come back on the outcome (:attr:`BillingOutcome.rows`) for the caller to add once the
  reading row they refer to is written: added to the session here, a query billing a later meter of
  the same batch made (auto)flush them before their reading existed;
- the plausibility rules are the meter's own (:meth:`BillingCache.rules_for`: its model's rated rate,
  its CT ratio, a manager's ``max_rate_per_hour``) and the reading is judged against the meter's rate
  budget (``meter_state.rate_budget``, :mod:`cloud.domain.readings`), which moves with the baseline;
- ``late`` (older than the baseline): inside billed history, the interval around it is re-rated —
  reversal of its charge and two replacement charges — when that changes the amount (a tariff
  version change inside it; under tiers, usage moved across a tier period reset, corrected against
  the account's usage per period; see :func:`_rerate`); older than the meter's first accepted
  reading, ``[late, first]`` is charged (billing extends backwards);
- no tariff at all (none of the meter's, no project default, or no version) → held ``no_tariff`` (the
  baseline stays; the holds are billed once a tariff covers the meter:
  :func:`cloud.services.tariff_coverage.bill_waiting`). A tariff bills from its first version's
  effective time: an interval before it rates to nothing (``zero``), one straddling it is billed pro
  rata for the covered part (:func:`cloud.domain.tariffs.rate`);
- a local-prepay meter (``prepay_mode`` local) → rated exactly like any other (tariff, TOU, tiers,
  the account's residue and tier usage) and ``billed``, but the charge debits ``held:<meter>``, not
  the wallet: the meter deducts its consumption itself, from money that moved wallet → held when its
  top-up was acknowledged (:func:`cloud.services.meter_topups.move_to_meter`). So held tracks what the meter
  should still hold, revenue includes local meters, and neither the wallet balance nor the arrears
  policy sees these charges. A reported ``remaining_yuan`` is compared with held
  (:func:`cloud.services.local_prepay.check_remaining`: an alarm beyond 1 yuan, nothing posted). Late
  readings of such a meter are re-rated (and extend billing backwards) like any other, on
  ``held:<meter>``.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.domain import ledger as dledger
from cloud.domain.errors import RatingError, TariffError
from cloud.domain.money import carry
from cloud.domain.readings import Snapshot, Verdict, check_backfill, check_reading
from cloud.domain.tariffs import rate
from cloud.models import AccountMeter, PrepayMode, ReadingRow, ReadingStatus
from cloud.services import ledger as ledger_service
from cloud.services import tier_usage
from cloud.services.arrears import project_zone
from cloud.services.isolation import UnitFault
from cloud.services.ledger import batch_line
from cloud.services.local_prepay import check_remaining, utility_of
from cloud.services.rating import (
    Baseline,
    BillableReading,
    BillingCache,
    BillingOutcome,
    MeterFacts,
    Payer,
    charge_key,
    debit_of,
    hold,
    rate_charge,
    rerate_key,
    snapshot_values,
    started_from,
    usage_for,
)
from cloud.services.tariff_loading import schedule_for, tariff_id_of

__all__ = ["bill_reading"]

_ACCEPTED = (ReadingStatus.BASELINE, ReadingStatus.BILLED, ReadingStatus.ZERO, ReadingStatus.NO_ACCOUNT)


def _advance(state: Baseline, snap: Snapshot, reading: BillableReading, budget: Decimal | None) -> None:
    """The reading becomes the baseline, with the rate budget it leaves (None: full)."""
    state.last_at = snap.at
    state.last_values = {q.value: str(v) for q, v in snap.registers().items()}
    state.last_seq = reading.seq
    state.rate_budget = budget


def bill_reading(
    session: Session,
    *,
    gateway_device: str,
    meter: MeterFacts,
    state: Baseline,
    account: Payer | None,
    reading: BillableReading,
    now: datetime,
    cache: BillingCache,
) -> BillingOutcome:
    """Validate, rate and charge one new reading (see the module docstring). The caller commits.

    ``state`` and ``account`` must be locked by the caller (``SELECT ... FOR UPDATE``) for the whole
    unit of work: the baseline, the residue and the tier usage rows are read-modify-write.
    """
    snap = Snapshot(reading.ts, reading.values)
    if not snap.registers():
        return BillingOutcome(ReadingStatus.INFO)
    last = Snapshot(state.last_at, snapshot_values(state.last_values)) if state.last_at else None
    check = check_reading(last, snap, now, cache.rules_for(meter), state.rate_budget if last else None)
    if check.verdict is Verdict.DUPLICATE:
        return BillingOutcome(ReadingStatus.DUPLICATE)
    local = meter.prepay_mode == PrepayMode.LOCAL
    if check.verdict is Verdict.LATE:
        return _late(session, gateway_device, meter, account, reading, snap, now, cache, check.detail)
    if check.hold:
        return hold(meter, reading, check.verdict.value, check.text_zh, check.text_en, check.detail)
    if last is None:
        _advance(state, snap, reading, check.budget)
        return BillingOutcome(ReadingStatus.BASELINE)
    if account is None:
        _advance(state, snap, reading, check.budget)
        return BillingOutcome(ReadingStatus.NO_ACCOUNT)
    if local:  # the meter spends money it holds: charged to held:<meter>, never to the wallet
        held = debit_of(meter)
        spent = rate_charge(
            session, gateway_device, meter, account, reading, last, snap, check.deltas, cache, debit=held
        )
        if spent.status is not ReadingStatus.HELD:
            _advance(state, snap, reading, check.budget)
            check_remaining(
                session,
                meter,
                seq=reading.seq,
                at=snap.at,
                values=reading.values,
                charge=spent.txn,
                timezone=cache.project(session, account.project_id).timezone,
            )
        return spent
    outcome = rate_charge(session, gateway_device, meter, account, reading, last, snap, check.deltas, cache)
    if outcome.status is not ReadingStatus.HELD:
        _advance(state, snap, reading, check.budget)
    return outcome


def _late(
    session: Session,
    gateway_device: str,
    meter: MeterFacts,
    account: Payer | None,
    reading: BillableReading,
    snap: Snapshot,
    now: datetime,
    cache: BillingCache,
    detail: str,
) -> BillingOutcome:
    """A reading older than the baseline. Inside billed history its consumption is already billed
    (registers are cumulative) but its split may not be: :func:`_rerate`. Older than the meter's *first*
    accepted reading — a new meter's first batches processed out of order by two replicas, or replayed
    late — it extends billing backwards: ``[late, first]`` is charged under its own key, if an account
    already paid for the meter then (link time)."""
    assert meter.id is not None
    first = session.execute(
        select(col(ReadingRow.ts), col(ReadingRow.values), col(ReadingRow.id))
        .where(col(ReadingRow.meter_id) == meter.id, col(ReadingRow.status).in_(_ACCEPTED))
        .order_by(col(ReadingRow.ts))
        .limit(1)
    ).first()
    if account is None or first is None or snap.at == first[0]:
        return BillingOutcome(ReadingStatus.LATE, detail=detail)
    if snap.at > first[0]:
        return _rerate(session, gateway_device, meter, account, reading, snap, now, cache, detail)
    extended = cache.backfilled.get(meter.id)
    if extended is not None and snap.at > extended:
        # inside [extended, first], charged moments ago from an earlier reading of this same message
        return BillingOutcome(ReadingStatus.LATE, detail=f"{detail}; inside billing just extended backwards")
    linked = session.scalar(
        select(col(AccountMeter.linked_at)).where(
            col(AccountMeter.meter_id) == meter.id,
            col(AccountMeter.account_id) == account.id,
            col(AccountMeter.unlinked_at).is_(None),
        )
    )
    if linked is None or snap.at < linked:
        return BillingOutcome(ReadingStatus.LATE, detail=f"{detail}; before the account's link")
    later = Snapshot(first[0], snapshot_values(first[1]))
    check = check_backfill(snap, later, now, cache.rules_for(meter))  # within the rate alone: see there
    if check.verdict is not Verdict.OK or check.hold:
        return BillingOutcome(
            ReadingStatus.LATE, detail=f"{detail}; cannot extend backwards: {check.verdict}"
        )
    outcome = rate_charge(
        session,
        gateway_device,
        meter,
        account,
        reading,
        snap,
        later,
        check.deltas,
        cache,
        debit=debit_of(meter),
        backfill=True,
    )
    if outcome.status is not ReadingStatus.HELD:
        cache.backfilled[meter.id] = snap.at
    if outcome.txn_key is not None:
        # like every interval's charge, [late, first]'s is named on the row that ends it, so that a
        # late reading inside it finds it (_rerate); the late reading's own row names it too (the
        # start of billing: an even earlier reading extending further back renames it)
        session.execute(
            update(ReadingRow).where(col(ReadingRow.id) == first[2]).values(txn_key=outcome.txn_key)
        )
    return outcome


def _rerate(
    session: Session,
    gateway_device: str,
    meter: MeterFacts,
    account: Payer,
    reading: BillableReading,
    snap: Snapshot,
    now: datetime,
    cache: BillingCache,
    detail: str,
) -> BillingOutcome:
    """A late reading inside billed history: re-rate the interval that contains it.

    The interval ``[start, end]`` was charged pro rata by time; the late reading says how consumption
    really split. Its charge is **reversed** (``rev:<key>``, with a reason) and replaced by two
    charges, ``[start, late]`` under the late reading's own key and ``[late, end]`` under
    :func:`rerate_key`. The residue is carried so that the fen posted still equal
    ``floor((residue₀ + Σ milli-fen) / 1000)``. Nothing is posted when the re-rated amount equals the
    billed one (the usual case: no tariff change inside the interval).

    Tiered tariffs: tier usage is kept per account and tier period (:mod:`cloud.services.tier_usage`),
    and each period's charges add up to the tiered price of its whole usage. The split moves units
    between periods only across a reset (month or year end, project time zone). The correction is
    what ``[start, late]`` + ``[late, end]`` cost minus what ``[start, end]`` costs, both rated on
    top of the account's usage *without* this interval (every other meter's and every later charge
    stay counted), and the usage of exactly the periods touched moves by the units moved. A changed
    split alone also re-rates (reversal + replacements with the same total), so the late reading
    becomes a boundary and a second late reading compares against the corrected split.
    """
    assert meter.id is not None
    assert account.id is not None
    before = session.execute(
        select(col(ReadingRow.ts), col(ReadingRow.values))
        .where(
            col(ReadingRow.meter_id) == meter.id,
            col(ReadingRow.status).in_(_ACCEPTED),
            col(ReadingRow.ts) < snap.at,
        )
        .order_by(col(ReadingRow.ts).desc())
        .limit(1)
    ).first()
    after = session.execute(
        select(
            col(ReadingRow.id),
            col(ReadingRow.ts),
            col(ReadingRow.values),
            col(ReadingRow.seq),
            col(ReadingRow.txn_key),
        )
        .where(
            col(ReadingRow.meter_id) == meter.id,
            col(ReadingRow.status).in_(_ACCEPTED),
            col(ReadingRow.ts) > snap.at,
        )
        .order_by(col(ReadingRow.ts))
        .limit(1)
    ).first()
    if before is None or after is None or after.txn_key is None:
        return BillingOutcome(ReadingStatus.LATE, detail=detail)
    start = Snapshot(before[0], snapshot_values(before[1]))
    end = Snapshot(after.ts, snapshot_values(after.values))
    rules = cache.rules_for(meter)  # the split moves no consumption: each half judged alone
    first_half = check_reading(start, snap, now, rules)
    second_half = check_reading(snap, end, now, rules)
    if first_half.verdict is not Verdict.OK or second_half.verdict is not Verdict.OK:
        return BillingOutcome(ReadingStatus.LATE, detail=f"{detail}; does not fit between its neighbours")
    project = cache.project(session, account.project_id)
    tariff_id = tariff_id_of(meter, project)
    try:
        schedule = schedule_for(session, tariff_id, cache) if tariff_id is not None else None
        tz = project_zone(project)
    except UnitFault as fault:  # alarmed by the meter's next rated reading; this one is history
        return BillingOutcome(ReadingStatus.LATE, detail=f"{detail}; not re-rated: {fault}"[:1000])
    original = ledger_service.get_transaction(session, after.txn_key)
    if schedule is None or original is None:
        return BillingOutcome(ReadingStatus.LATE, detail=detail)
    held = debit_of(meter)
    wallet = held or dledger.wallet_code(account.id)  # the account the interval's charge debited
    # the interval's own charge, or its line of a batch charge (plan_charges)
    line = batch_line(original.details, wallet)
    ct = Decimal(meter.ct_ratio)
    deltas_a = {q: d * ct for q, d in first_half.deltas.items()}
    deltas_b = {q: d * ct for q, d in second_half.deltas.items()}
    whole = {q: d + deltas_b[q] for q, d in deltas_a.items() if q in deltas_b}
    usage = usage_for(session, account.id, meter.kind, schedule, start.at, end.at, tz)
    try:
        # the units the charge counted per tier period do not depend on the usage it started from
        billed = rate(schedule, start.at, end.at, whole, tz=tz, usage={}).added
        # the account's usage without this interval: every other charge of every meter stays counted
        base = {p: used - billed.get(p, Decimal(0)) for p, used in (usage or {}).items()}
        again = rate(schedule, start.at, end.at, whole, tz=tz, usage=base)
        part_a = rate(schedule, start.at, snap.at, deltas_a, tz=tz, usage=base)
        after_a = {
            p: base.get(p, Decimal(0)) + part_a.added.get(p, Decimal(0)) for p in {*base, *part_a.added}
        }
        part_b = rate(schedule, snap.at, end.at, deltas_b, tz=tz, usage=after_a)
    except (RatingError, TariffError):
        return BillingOutcome(ReadingStatus.LATE, detail=detail)
    new_milli = part_a.amount_milli + part_b.amount_milli
    counted = {
        p: part_a.added.get(p, Decimal(0)) + part_b.added.get(p, Decimal(0))
        for p in {*part_a.added, *part_b.added}
    }
    moved = {p: counted.get(p, Decimal(0)) - billed.get(p, Decimal(0)) for p in {*counted, *billed}}
    if new_milli == again.amount_milli and not any(moved.values()):
        return BillingOutcome(ReadingStatus.LATE, detail=f"{detail}; re-rating changes nothing")
    old_txn = ledger_service.load_transaction(session, original)
    old_fen = -old_txn.amount_on(wallet)
    # each period's charges stay the tiered price of its whole usage: the correction is what the
    # interval costs split minus what it costs whole, both on top of the account's other usage
    delta_fen, residue = carry(account.residue_millifen, new_milli - again.amount_milli)
    total = old_fen + delta_fen
    # each part its own whole fen, B's first: under tiers a part rated on top of the account's usage
    # may alone cost more than the total moves, and a part left at 0 fen would name no charge its
    # row could be re-rated from
    paid = max(total, 0)
    fen_a = min(max(part_a.amount_milli // 1000, 0), paid - min(max(part_b.amount_milli // 1000, 0), paid))
    fen_b = paid - fen_a
    if line is not None:  # only this reading's line of the batch: the other readings' stay as billed
        reason = f"late reading seq {reading.seq} re-rates seq {after.seq} of {after.txn_key}"
        own_key = charge_key(gateway_device, meter.device_id, after.seq)
        undo = dledger.reverse_line(old_txn, wallet, dledger.reversal_key(own_key), reason, now)
    else:
        reason = f"late reading seq {reading.seq} re-rates {after.txn_key}"
        undo = dledger.reverse(old_txn, reason, now)
    ledger_service.post(session, undo, org_id=account.org_id)
    utility = utility_of(meter.kind)
    revenue = dledger.revenue_code(account.project_id, utility)
    key_a = charge_key(gateway_device, meter.device_id, reading.seq)
    key_b = rerate_key(gateway_device, meter.device_id, after.seq, reading.seq)
    for key, fen, at, milli, started in (
        (key_a, fen_a, snap.at, part_a.amount_milli, started_from(base, part_a.added)),
        (key_b, fen_b, end.at, part_b.amount_milli, started_from(after_a, part_b.added)),
    ):
        if fen > 0:
            meta = {
                "meter_id": str(meter.id),
                "seq": str(reading.seq),
                "amount_milli": str(milli),
                "rerate": "1",
                "tier_period": started.period,
                "tier_used": str(started.used),
            }
            memo = reason + (" (on the meter)" if held else "")
            txn = dledger.charge(key, wallet, fen, at, revenue=revenue, memo=memo, meta=meta)
            ledger_service.post(session, txn, org_id=account.org_id)
    account.residue_millifen = residue
    tier_usage.add(session, account.id, meter.kind, moved)  # exactly the periods the split moved units in
    session.execute(
        update(ReadingRow).where(col(ReadingRow.id) == after.id).values(txn_key=key_b if fen_b > 0 else None)
    )
    return BillingOutcome(ReadingStatus.BILLED, account.id, 0, key_a if fen_a > 0 else None, detail=reason)
