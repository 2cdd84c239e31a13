"""Fault isolation: one organisation's unusable rows hold only themselves (both engines).

Each test writes a bad row straight into the database, as an older release, a manual fix or a bug
would (the API refuses these values: see test_isolation_api.py), next to a healthy organisation, and
checks that the healthy one's work happens in the same pass while the bad row is held, alarmed once
(zh-CN and English, deduplicated) and logged loudly once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.domain import ledger as rules
from cloud.domain.errors import RatingError, TariffError
from cloud.domain.money import carry
from cloud.domain.tariffs import MAX_PRICE_MILLI, MAX_RATED_MILLI, TOU_REGISTERS, TariffSchedule, rate
from cloud.domain.tariffs import TariffVersion as DomainVersion
from cloud.events import LocalEventBus
from cloud.integrations.mqtt import MqttError
from cloud.jobs import JobContext, cut_sweep, daily_aggregates
from cloud.models import (
    Account,
    AccountMeter,
    AccountState,
    Alarm,
    CommandRow,
    DailyAggregate,
    DeadLetter,
    Meter,
    MeterState,
    Project,
    ReadingHold,
    ReadingRow,
    Tariff,
    TariffVersion,
)
from cloud.runtime import Reconciler
from cloud.services import ledger
from cloud.services.audit import Actor
from cloud.services.control import ControlConfig, operator_command
from cloud.services.holds import Resolution, resolve_hold
from cloud.services.ingest import Ingest
from cloud.services.isolation import FAULTS
from cloud.services.tariff_loading import UNREADABLE
from cloud.services.unit import unit_of_work
from protocol.contract import Action, GatewayConfig, Quantity, RelayState
from tests.cloud.flowkit import (
    FIRST_KID,
    KEY,
    T0,
    FlowSite,
    balance,
    batch,
    commands,
    count,
    make_flow_site,
    recharge,
)
from tests.cloud.test_control import Clock, Wire
from tests.edge.mqtt_helpers import opened
from tests.waiting import until

NOW = T0 + timedelta(hours=2)


@pytest.fixture(autouse=True)
def _fresh_fault_log() -> Iterator[None]:
    """ "Loud once" is per process; every test starts as a fresh process would."""
    FAULTS.clear()
    yield
    FAULTS.clear()


def _poison_project(factory: sessionmaker[Session], site: FlowSite) -> None:
    """What the API refuses (problem 1 of issue 9), written past it."""
    with factory() as s:
        s.execute(
            update(Project)
            .where(col(Project.id) == site.project_id)
            .values(timezone="Mars/Olympus", friendly_start="99:99")
        )
        s.commit()


def _alarms(factory: sessionmaker[Session], prefix: str = "fault:") -> list[Alarm]:
    with factory() as s:
        return list(s.scalars(select(Alarm).where(col(Alarm.dedupe_key).startswith(prefix))))


def _errors(caplog: pytest.LogCaptureFixture, needle: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "cloud.services.isolation" and r.levelno >= logging.ERROR and needle in r.getMessage()
    ]


def _manager(site: FlowSite) -> Actor:
    return Actor(user_id=None, org_id=site.org_id, role="manager", username="王经理")


def _open_meter(factory: sessionmaker[Session], site: FlowSite, clock: Clock) -> None:
    """The meter reports its relay open (tripped earlier): a baseline reading, nothing billed."""
    ingest = Ingest(factory, clock=clock, prefix=site.prefix)
    ingest.handle(
        *batch(site, [("m1", 1, clock.now - timedelta(minutes=5), "100.00")], relay=RelayState.OPEN)
    )


def test_a_recharge_restores_one_organisation_while_another_has_unusable_settings(
    session_factory: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    """Problem 1: ``react`` evaluated every account of a wake-up in one transaction; the bad project
    raised and the healthy tenant's restore waited for a restart."""
    caplog.set_level(logging.DEBUG, logger="cloud.services.isolation")
    clock = Clock(NOW)
    good = make_flow_site(session_factory, balance_fen=0)
    bad = make_flow_site(session_factory, balance_fen=0)
    for site in (good, bad):
        _open_meter(session_factory, site, clock)
    _poison_project(session_factory, bad)
    bus = LocalEventBus()
    wire = Wire()
    reconciler = Reconciler(session_factory, wire, bus, ControlConfig(), clock=clock)
    for site in (good, bad):
        recharge(session_factory, site, "m1", 1_000, at=NOW)
    accounts = {good.accounts["m1"], bad.accounts["m1"]}

    reconciler.react(accounts, set())
    reconciler.react(accounts, set())  # the next wake-up: the same fault, reported no more

    sent = wire.commands()
    assert [(c.gateway, c.action) for c in sent] == [(good.gateway, Action.CLOSE)]
    assert commands(session_factory, bad.meters["m1"]) == []
    (alarm,) = _alarms(session_factory)
    assert alarm.dedupe_key == f"fault:project:{bad.project_id}"
    assert alarm.kind == "settings_invalid"
    assert alarm.org_id == bad.org_id
    assert "Mars/Olympus" in alarm.message_en or "99:99" in alarm.message_en
    assert "项目" in alarm.message_zh
    assert "设置无效" in alarm.message_zh
    assert len(_errors(caplog, f"#{bad.project_id}")) == 1

    with session_factory() as s:  # corrected: the next wake-up restores it and clears the alarm
        s.execute(
            update(Project)
            .where(col(Project.id) == bad.project_id)
            .values(timezone="Asia/Shanghai", friendly_start="18:00")
        )
        s.commit()
    reconciler.react(accounts, set())
    assert [(c.gateway, c.action) for c in wire.commands()][1:] == [(bad.gateway, Action.CLOSE)]
    (alarm,) = _alarms(session_factory)
    assert alarm.cleared_at is not None


def test_gateway_configs_go_out_for_everyone_but_the_unusable_rows(
    session_factory: sessionmaker[Session],
) -> None:
    """Problem 1, the horizons task: one project's zone made ``publish_configs`` raise for every
    gateway due in the round. A gateway whose rows raise anything else (a CT ratio of 0) is skipped
    on its own, with one alarm."""
    clock = Clock(NOW)
    good = make_flow_site(session_factory, balance_fen=1_000)
    bad = make_flow_site(session_factory, balance_fen=1_000)
    broken = make_flow_site(session_factory, balance_fen=1_000)
    for site in (good, bad, broken):
        Ingest(session_factory, clock=clock).handle(
            *batch(site, [("m1", 1, NOW - timedelta(minutes=1), "100")])
        )
    _poison_project(session_factory, bad)
    with session_factory() as s:  # the API keeps ct_ratio >= 1; the horizon divides by it
        s.execute(update(Meter).where(col(Meter.id) == broken.meters["m1"]).values(ct_ratio=0))
        s.commit()
    wire = Wire()
    reconciler = Reconciler(session_factory, wire, LocalEventBus(), ControlConfig(), clock=clock)
    reconciler.mark_gateways_dirty({good.gateway_id, bad.gateway_id, broken.gateway_id})

    assert reconciler.publish_configs(force=True) == 2
    assert reconciler.publish_configs(force=True) == 0  # only the broken one is still due: skipped again
    keys = {FIRST_KID: KEY.encode()}
    configs = {c.gateway: c for c in (opened(GatewayConfig, t, p, keys) for t, p, _ in wire.sent)}
    assert configs[good.gateway].horizons["m1"].limit == 120  # 1,000 fen at 0.5 yuan/kWh above 100
    assert configs[bad.gateway].horizons == {}  # its meter's zone is unusable: no horizon, no stall
    assert broken.gateway not in configs
    (alarm,) = _alarms(session_factory)
    assert alarm.dedupe_key == f"fault:gateway:{broken.gateway_id}"
    assert alarm.kind == "processing_failed"
    assert "DivisionByZero" in alarm.message_en
    assert f"网关 {broken.gateway}" in alarm.message_zh


def _meter_with_tariff(
    factory: sessionmaker[Session], site: FlowSite, device: str, spec: dict[str, object]
) -> int:
    """Another meter and account on ``site``'s gateway, rated by its own tariff whose one version has
    ``spec`` — written straight to the database, as the API would refuse it."""
    with factory() as s:
        tariff = Tariff(org_id=site.org_id, name=f"t-{device}", kind="flat")
        s.add(tariff)
        s.flush()
        assert tariff.id is not None
        s.add(TariffVersion(tariff_id=tariff.id, effective_from=T0 - timedelta(days=400), spec=spec))
        meter = Meter(
            org_id=site.org_id,
            gateway_id=site.gateway_id,
            device_id=device,
            address=f"0000000{uuid.uuid4().int % 10**5:05d}",
            tariff_id=tariff.id,
        )
        account = Account(org_id=site.org_id, project_id=site.project_id, number=f"A-{device}")
        s.add_all([meter, account])
        s.flush()
        assert meter.id is not None
        assert account.id is not None
        s.add(AccountMeter(account_id=account.id, meter_id=meter.id, linked_at=T0 - timedelta(days=400)))
        s.commit()
        site.meters[device] = meter.id
        site.accounts[device] = account.id
        return tariff.id


def test_a_batch_bills_its_good_meters_and_holds_the_ones_with_unusable_rows(
    session_factory: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    """Problem 2: a price of 10³⁰, a megabyte tariff name, or a corrupt account row made the whole
    batch — every other tenant's readings in it — a dead letter."""
    caplog.set_level(logging.DEBUG, logger="cloud.services.isolation")
    clock = Clock(NOW)
    site = make_flow_site(session_factory, balance_fen=10_000)
    huge = _meter_with_tariff(session_factory, site, "m2", {"kind": "flat", "price_milli": 10**30})
    named = _meter_with_tariff(
        session_factory, site, "m3", {"kind": "flat", "price_milli": 50_000, "name": "x" * 1_048_576}
    )
    _meter_with_tariff(session_factory, site, "m4", {"kind": "flat", "price_milli": 50_000})
    for device in ("m2", "m3", "m4"):
        recharge(session_factory, site, device, 10_000)
    with session_factory() as s:  # m4's account carries a residue outside 0..999 milli-fen
        s.execute(
            update(Account).where(col(Account.id) == site.accounts["m4"]).values(residue_millifen=5_000)
        )
        s.commit()
    ingest = Ingest(session_factory, clock=clock)
    devices = ("m1", "m2", "m3", "m4")
    for k, value in enumerate(("100.00", "110.00", "120.00")):  # 10 kWh per meter per interval
        at = NOW - timedelta(hours=3 - k)
        ingest.handle(*batch(site, [(d, k + 1, at, value) for d in devices]))

    assert count(session_factory, DeadLetter) == 0
    assert balance(session_factory, site, "m1") == 10_000 - 2 * 500  # billed, at 0.5 yuan/kWh
    for device in ("m2", "m3", "m4"):
        assert balance(session_factory, site, device) == 10_000  # nothing charged from a bad row
    with session_factory() as s:
        statuses = {
            (r.meter_device, r.seq): r.status
            for r in s.scalars(select(ReadingRow).where(col(ReadingRow.gateway_id) == site.gateway_id))
        }
        verdicts = {
            (h.meter_id, h.verdict) for h in s.scalars(select(ReadingHold)) if h.meter_id != site.meters["m1"]
        }
    assert [statuses[("m1", k)] for k in (1, 2, 3)] == ["baseline", "billed", "billed"]
    assert [statuses[("m2", k)] for k in (1, 2, 3)] == ["baseline", "held", "held"]
    assert [statuses[("m3", k)] for k in (1, 2, 3)] == ["baseline", "held", "held"]
    assert [statuses[("m4", k)] for k in (1, 2, 3)] == ["baseline", "held", "held"]
    assert verdicts == {
        (site.meters["m2"], "tariff"),
        (site.meters["m3"], "tariff"),
        (site.meters["m4"], "error"),
    }
    alarms = {a.dedupe_key: a for a in _alarms(session_factory)}
    assert set(alarms) == {
        f"fault:tariff:{huge}",
        f"fault:tariff:{named}",
        f"fault:meter:{site.meters['m4']}",
    }
    assert alarms[f"fault:tariff:{huge}"].kind == "settings_invalid"
    assert "price_milli" in alarms[f"fault:tariff:{huge}"].message_en
    assert "spec: 1048" in alarms[f"fault:tariff:{named}"].message_en  # refused unread
    assert alarms[f"fault:meter:{site.meters['m4']}"].kind == "processing_failed"
    assert "表计 m4" in alarms[f"fault:meter:{site.meters['m4']}"].message_zh
    assert all(len(a.message_en) <= 500 and len(a.message_zh) <= 500 for a in alarms.values())
    for unit in (f"tariff t-m2 (#{huge})", f"tariff t-m3 (#{named})", "meter m4"):
        assert len(_errors(caplog, unit)) == 1, unit  # three batches: loud once, then quiet


def test_cut_sweep_cuts_the_healthy_account_while_another_project_is_unusable(
    session_factory: sessionmaker[Session],
) -> None:
    """The minute job evaluated every due account in one transaction: one bad project failed it,
    every minute, for everyone."""
    clock = Clock(NOW)
    sites = [make_flow_site(session_factory, balance_fen=0) for _ in range(2)]
    for site in sites:
        Ingest(session_factory, clock=clock).handle(
            *batch(site, [("m1", 1, NOW - timedelta(minutes=1), "100")])
        )
        with unit_of_work(session_factory) as s:  # 5 yuan consumed before; the account is 5 yuan short
            ledger.post(
                s,
                rules.charge(
                    f"chg:test:{uuid.uuid4().hex}",
                    rules.wallet_code(site.accounts["m1"]),
                    500,
                    NOW - timedelta(hours=1),
                    revenue=rules.revenue_code(site.project_id, "electric"),
                ),
                org_id=site.org_id,
            )
            s.add(AccountState(account_id=site.accounts["m1"], arrears_since=NOW - timedelta(hours=1)))
    good, bad = sites
    _poison_project(session_factory, bad)
    ctx = JobContext(NOW, "p1", None, timedelta(minutes=5), "Asia/Shanghai")
    with unit_of_work(session_factory) as s:
        result = cut_sweep(s, ctx)
    assert result["failed"] == 1
    assert result["_desired_changed"] == [good.meters["m1"]]
    with session_factory() as s:
        states = {m: s.get(MeterState, m) for m in (good.meters["m1"], bad.meters["m1"])}
    assert states[good.meters["m1"]].desired == "open"  # type: ignore[union-attr]
    assert states[bad.meters["m1"]].desired is None  # type: ignore[union-attr]
    assert [a.dedupe_key for a in _alarms(session_factory)] == [f"fault:project:{bad.project_id}"]


def test_the_sweep_goes_on_past_a_command_whose_rows_are_unusable(
    session_factory: sessionmaker[Session],
) -> None:
    """The reconciler's 1 s sweep re-plans top-ups of local-prepay meters (the policy again): one bad
    project made every sweep fail — no retry, expiry or re-publication for anyone."""
    clock = Clock(NOW)
    good = make_flow_site(session_factory, balance_fen=0)
    bad = make_flow_site(session_factory, balance_fen=0)
    with session_factory() as s:  # the bad site's meter keeps its own money; its account was recharged
        s.execute(update(Meter).where(col(Meter.id) == bad.meters["m1"]).values(prepay_mode="local"))
        s.commit()
    recharge(session_factory, bad, "m1", 1_000, at=NOW - timedelta(minutes=1))
    _poison_project(session_factory, bad)
    wire = Wire()
    reconciler = Reconciler(session_factory, wire, LocalEventBus(), ControlConfig(), clock=clock)
    earlier = NOW - timedelta(seconds=10)
    with unit_of_work(session_factory) as s:  # the healthy meter's trip, committed, never published
        queued = operator_command(s, _manager(good), good.meters["m1"], Action.TRIP, earlier, ControlConfig())
    reconciler.sweep_once()
    reconciler.sweep_once()
    assert [c.id for c in wire.commands()] == [queued.id]  # re-published once, by the first sweep
    with session_factory() as s:
        row = s.get(CommandRow, queued.id)
        assert row is not None
        assert row.status == "sent"
    assert [a.dedupe_key for a in _alarms(session_factory)] == [f"fault:project:{bad.project_id}"]


def test_operator_command_is_claimed_by_one_replica(session_factory: sessionmaker[Session]) -> None:
    """Every replica hears ``command_queued``: the command must reach the gateway once (a second copy
    is a replay the gateway rejects, with an alarm)."""
    clock = Clock(NOW)
    site = make_flow_site(session_factory, balance_fen=1_000)
    first, second = Wire(), Wire()
    replicas = [
        Reconciler(session_factory, wire, LocalEventBus(), ControlConfig(), clock=clock)
        for wire in (first, second)
    ]
    with unit_of_work(session_factory) as s:
        queued = operator_command(s, _manager(site), site.meters["m1"], Action.TRIP, NOW, ControlConfig())
    start = threading.Barrier(len(replicas))

    def hear(reconciler: Reconciler) -> None:
        start.wait()  # both hear the event at the same instant
        reconciler.publish_queued({queued.id})

    threads = [threading.Thread(target=hear, args=(r,)) for r in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [c.id for c in first.commands() + second.commands()] == [queued.id]
    with session_factory() as s:
        row = s.get(CommandRow, queued.id)
        assert row is not None
        assert row.status == "sent"


def test_operator_command_publish_failure_leaves_it_for_the_sweep(
    session_factory: sessionmaker[Session],
) -> None:
    clock = Clock(NOW)
    site = make_flow_site(session_factory, balance_fen=1_000)

    def down(topic: str, payload: bytes, retain: bool) -> None:
        raise MqttError("broker down")

    reconciler = Reconciler(session_factory, down, LocalEventBus(), ControlConfig(), clock=clock)
    with unit_of_work(session_factory) as s:
        queued = operator_command(s, _manager(site), site.meters["m1"], Action.TRIP, NOW, ControlConfig())
    assert reconciler.publish_queued({queued.id}) == []
    with session_factory() as s:
        row = s.get(CommandRow, queued.id)
        assert row is not None
        assert row.status == "pending"  # the sweep re-publishes it


# --- whatever is stored can be rated, or is held: never an exception the batch cannot place ----------

_NUMBER_TEXT = st.one_of(
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["0.5683", "1000", "1000.00001", "1e30", "1e999999999", "-1", "", "0x10", "1" * 60]),
)
_PRICE = st.one_of(st.integers(min_value=-(10**40), max_value=10**40), st.booleans(), st.none(), _NUMBER_TEXT)
_TIER = st.fixed_dictionaries(
    {},
    optional={
        "upto": st.one_of(st.none(), _NUMBER_TEXT, st.integers(min_value=-5, max_value=10**12)),
        "price": _NUMBER_TEXT,
        "price_milli": _PRICE,
    },
)
_SPEC = st.fixed_dictionaries(
    {"kind": st.one_of(st.sampled_from(["flat", "tou", "tiered", "water"]), st.text(max_size=8))},
    optional={
        "price_milli": _PRICE,
        "price": _NUMBER_TEXT,
        "tou_prices": st.dictionaries(st.sampled_from(["energy_t1_kwh", "energy_t2_kwh", "nope"]), _PRICE),
        "tou_prices_yuan": st.dictionaries(st.sampled_from(["energy_t3_kwh", "energy_t4_kwh"]), _NUMBER_TEXT),
        "tiers": st.one_of(st.lists(_TIER, max_size=20), st.integers(), st.text(max_size=4)),
        "tier_reset": st.one_of(st.sampled_from(["monthly", "yearly"]), st.text(max_size=8)),
        "name": st.one_of(
            st.text(max_size=20), st.integers(min_value=201, max_value=400).map(lambda n: "x" * n)
        ),
    },
)
_DELTA = st.decimals(min_value=0, max_value=10**12, places=3, allow_nan=False, allow_infinity=False)


@settings(max_examples=400, deadline=None)
@given(spec=_SPEC, delta=_DELTA)
def test_a_stored_spec_rates_within_bounds_or_is_held(spec: dict[str, Any], delta: Decimal) -> None:
    """The one spec reader (``TariffVersion.from_spec``, what ``schedule_for`` runs for every batch) either
    refuses a spec with an error ``schedule_for`` turns into a held tariff, or returns a version that
    rates any plausible interval to an amount the ledger holds — or refuses the interval as a
    :class:`RatingError` (the reading is held). Nothing else may escape into a batch."""
    try:
        schedule = TariffSchedule([DomainVersion.from_spec("1", T0 - timedelta(days=1), spec)])
    except UNREADABLE:
        return
    version = schedule.versions[0]
    assert all(0 <= p <= MAX_PRICE_MILLI for p in (version.price_milli or 0, *version.tou_prices.values()))
    deltas = dict.fromkeys((*TOU_REGISTERS, Quantity.ENERGY_TOTAL_KWH, Quantity.FLOW_TOTAL_M3), delta)
    try:
        result = rate(schedule, T0, T0 + timedelta(hours=1), deltas)
    except (RatingError, TariffError):
        return
    assert 0 <= result.amount_milli <= MAX_RATED_MILLI
    fen, _ = carry(999, result.amount_milli)
    assert fen < 2**63


@settings(max_examples=300, deadline=None)
@given(spec=_SPEC)
def test_what_the_api_stores_billing_reads_back(spec: dict[str, Any]) -> None:
    """The write path (``TariffVersion.from_spec``, then ``to_spec``) and billing's reading of the
    stored spec (the same reader) agree: a version the API accepted is never unreadable afterwards."""
    try:
        accepted = DomainVersion.from_spec("1", T0, spec)
    except TariffError:
        return
    assert DomainVersion.from_spec("1", T0, accepted.to_spec()) == accepted


def test_a_project_without_a_usable_policy_is_still_billed(session_factory: sessionmaker[Session]) -> None:
    """Only ``friendly_start`` is bad: the time zone is fine, so readings are billed as usual (money
    is never held back by a policy setting); the policy alone is skipped and alarmed — in the ingest
    and when an operator bills a held reading."""
    clock = Clock(NOW)
    site = make_flow_site(session_factory, balance_fen=300)
    with session_factory() as s:
        s.execute(update(Project).where(col(Project.id) == site.project_id).values(friendly_start="99:99"))
        s.commit()
    ingest = Ingest(session_factory, clock=clock)
    ingest.handle(*batch(site, [("m1", 1, NOW - timedelta(hours=3), "100.00")]))
    ingest.handle(*batch(site, [("m1", 2, NOW - timedelta(hours=2), "110.00")]))  # 500 fen: in arrears
    ingest.handle(*batch(site, [("m1", 3, NOW - timedelta(hours=1), "190.00")]))  # 80 kWh in 1 h: spike
    assert balance(session_factory, site) == -200
    with session_factory() as s:
        state = s.get(MeterState, site.meters["m1"])
        assert state is not None
        assert state.desired is None  # not decided: the policy cannot be applied
        hold = s.scalars(select(ReadingHold)).one()
        assert hold.verdict == "spike"
    with unit_of_work(session_factory) as s:
        outcome = resolve_hold(s, _manager(site), hold.id or 0, Resolution.BILL, "checked on site", NOW)
    assert outcome.charged_fen == 4_000
    assert balance(session_factory, site) == -4_200
    assert [a.dedupe_key for a in _alarms(session_factory)] == [f"fault:project:{site.project_id}"]


def test_daily_aggregates_skip_a_meter_with_a_corrupt_reading_row(
    session_factory: sessionmaker[Session],
) -> None:
    """The daily job aggregated every meter in one transaction: one corrupt row (values that are not
    a mapping) failed the day for everyone, every 30 minutes."""
    clock = Clock(NOW)
    good = make_flow_site(session_factory, balance_fen=1_000)
    bad = make_flow_site(session_factory, balance_fen=1_000)
    day_before = NOW - timedelta(days=1)
    for site in (good, bad):
        Ingest(session_factory, clock=Clock(day_before)).handle(*batch(site, [("m1", 1, day_before, "100")]))
    with session_factory() as s:
        s.execute(
            update(ReadingRow).where(col(ReadingRow.meter_id) == bad.meters["m1"]).values(values=[1, 2, 3])
        )
        s.commit()
    period = (NOW.astimezone(ZoneInfo("Asia/Shanghai"))).date().isoformat()
    ctx = JobContext(clock.now, period, None, timedelta(minutes=5), "Asia/Shanghai")
    with unit_of_work(session_factory) as s:
        result = daily_aggregates(s, ctx)
    assert result["meters"] == 1
    with session_factory() as s:
        scopes = set(s.scalars(select(DailyAggregate.scope)))  # type: ignore[call-overload]
    assert f"meter:{good.meters['m1']}" in scopes
    assert f"meter:{bad.meters['m1']}" not in scopes
    assert [a.dedupe_key for a in _alarms(session_factory)] == [f"fault:meter:{bad.meters['m1']}"]


async def test_malformed_events_on_the_bus_do_not_stop_the_reconciler(
    session_factory: sessionmaker[Session],
) -> None:
    """The bus is shared by every organisation and replica (Redis): an event with a non-numeric id or
    a million meters used to raise out of the reconciler's loop and end it until a restart."""
    clock = Clock(NOW)
    site = make_flow_site(session_factory, balance_fen=0)
    _open_meter(session_factory, site, clock)
    bus = LocalEventBus()
    wire = Wire()
    reconciler = Reconciler(session_factory, wire, bus, ControlConfig(), clock=clock, tick_s=0.05)
    stop = asyncio.Event()
    loop = asyncio.create_task(reconciler.run(stop))
    try:
        await asyncio.sleep(0.2)
        for kind, payload in [
            ("balance_changed", {"account_id": "not a number"}),
            ("desired_changed", {"meter_ids": 42}),
            ("desired_changed", {"meter_ids": list(range(10**6))}),
            ("ack_received", {"meter_id": None}),
            ("gateway_billed", {"gateway_id": [1]}),
        ]:
            bus.publish(kind, payload)
        recharge(session_factory, site, "m1", 1_000, at=NOW, publish=bus.publish)
        await until(wire.commands, within=10)
        assert [c.action for c in wire.commands()] == [Action.CLOSE]
        assert not loop.done()
    finally:
        stop.set()
        await asyncio.wait_for(loop, 10)
