"""The whole gateway in one process: simulated meters on a TCP line → daemon → real Mosquitto.

Commands are signed and published by the test as the cloud would; meters are firmware_sim meters
speaking DL/T 645 bytes at 2400 8E1, so relay states are checked at the meter itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from edge.config import EdgeConfig
from edge.daemon import Daemon
from edge.devbroker import Mosquitto
from firmware_sim.line import SimLine
from firmware_sim.meters import Ddsy1352Sim, PrepaidSettings
from firmware_sim.serve import LineHandle, run_line
from protocol.contract import (
    Ack,
    AckStatus,
    Action,
    Command,
    CreditHorizon,
    Event,
    EventBatch,
    EventKind,
    GatewayConfig,
    GatewayStatus,
    Quantity,
    RelayState,
    Topics,
    encode,
    seal_message,
    sign_command,
)
from tests.edge.mqtt_helpers import KEY as TEST_KEY
from tests.edge.mqtt_helpers import Subscriber, make_config, sim_line_config
from tests.waiting import until

pytestmark = pytest.mark.services
KEY = "e2e-key"


@pytest.fixture
def sim() -> Iterator[LineHandle]:
    meters = [
        Ddsy1352Sim(
            f"0000000001{i:02d}", initial_kwh=Decimal(100 + i), prepaid=PrepaidSettings() if i == 1 else None
        )
        for i in range(4)
    ]
    with run_line(SimLine(2400, "E", meters, turnaround_s=0.02, name="sim"), pty=False) as handle:
        yield handle


@contextlib.asynccontextmanager
async def daemon(config: EdgeConfig) -> AsyncIterator[Daemon]:
    d = Daemon(config)
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop))
    try:
        yield d
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)




def signed(
    cid: str,
    meter: str,
    action: Action,
    *,
    key: str = KEY,
    expires_in: float = 60,
    gateway: str = "gw-test",
    **params: int | str,
) -> bytes:
    now = datetime.now(UTC)
    cmd = Command(
        id=cid,
        gateway=gateway,
        meter=meter,
        action=action,
        params=params,
        issued_at=now - timedelta(seconds=1),
        expires_at=now + timedelta(seconds=expires_in),
    )
    return encode(sign_command(cmd, key.encode(), kid="k1"))


def acks(sub: Subscriber) -> dict[str, Ack]:
    return {a.command: a for a in sub.opened(Ack, "/up/acks")}


def events(sub: Subscriber) -> list[Event]:
    return [e for batch in sub.opened(EventBatch, "/up/events") for e in batch.events]


async def test_readings_flow_in_order_and_commands_are_verified(
    mqtt_broker: tuple[str, int], unique_prefix: str, tmp_path: Path, sim: LineHandle
) -> None:
    host, port = mqtt_broker
    config = make_config(
        tmp_path, port, unique_prefix, key=KEY, lines=(sim_line_config(sim.url, sim.meters, interval_s=0.3),)
    )
    topics = Topics("gw-test", unique_prefix)
    sub = Subscriber(
        host,
        port,
        f"{unique_prefix}/gw/+/up/#",
        client_id=f"e2e-{unique_prefix[-10:]}",
        keys={"k1": KEY.encode()},
    )
    meter0 = sim.meters[0]
    try:
        async with daemon(config) as d:
            await until(lambda: len({m for m, _ in sub.readings()}) == 4)
            # a valid trip: acked DONE only after read-back, and the meter really is off by then
            sub.publish(topics.commands, signed("trip-1", "m0", Action.TRIP))
            await until(lambda: "trip-1" in acks(sub))
            ack = acks(sub)["trip-1"]
            assert ack.status == AckStatus.DONE
            assert ack.observed == RelayState.OPEN
            assert meter0.relay_open  # read-back happened before the ack: the relay was already open
            # forged, expired, other gateway's, replayed: refused, meter untouched
            sub.publish(topics.commands, signed("close-forged", "m0", Action.CLOSE, key="wrong"))
            sub.publish(topics.commands, signed("close-expired", "m0", Action.CLOSE, expires_in=-5))
            sub.publish(topics.commands, signed("trip-1", "m0", Action.TRIP))
            await until(
                lambda: {"close-forged", "close-expired"} <= set(acks(sub)) and len(sub.on("/up/acks")) >= 4
            )
            got = acks(sub)
            assert got["close-forged"].status == AckStatus.REJECTED
            assert "signature" in got["close-forged"].detail
            assert got["close-expired"].status == AckStatus.REJECTED
            replay = sub.opened(Ack, "/up/acks")[-1]
            assert replay.command == "trip-1"
            assert replay.status == AckStatus.REJECTED
            assert "duplicate" in replay.detail
            assert meter0.relay_open  # nothing closed it
            # a valid close restores supply
            sub.publish(topics.commands, signed("close-1", "m0", Action.CLOSE))
            await until(lambda: "close-1" in acks(sub))
            assert acks(sub)["close-1"].status == AckStatus.DONE
            assert not meter0.relay_open
            # recharge of a meter that keeps its own balance: applied once, purchase count checked
            meter1 = sim.meters[1]
            balance, count = meter1.balance_fen, meter1.purchase_count
            sub.publish(
                topics.commands,
                signed("rc-1", "m1", Action.RECHARGE, amount_fen=5000, purchase_count=count + 1),
            )
            sub.publish(
                topics.commands,
                signed("rc-2", "m1", Action.RECHARGE, amount_fen=5000, purchase_count=count + 3),
            )  # a purchase went missing
            sub.publish(topics.commands, signed("sync-1", "m2", Action.TIME_SYNC))
            await until(lambda: {"rc-1", "rc-2", "sync-1"} <= set(acks(sub)))
            got = acks(sub)
            assert got["rc-1"].status == AckStatus.DONE, got["rc-1"]
            assert meter1.purchase_count == count + 1
            assert meter1.balance_fen >= balance + 5000 - 100  # minus what it used meanwhile
            assert got["rc-2"].status == AckStatus.FAILED
            assert "purchase count" in got["rc-2"].detail
            assert got["sync-1"].status == AckStatus.DONE
            await until(lambda: min(sum(1 for m, _ in sub.readings() if m == f"m{i}") for i in range(4)) >= 3)
            assert d.commands.rejected == 3
        readings = sub.readings()
        for i in range(4):
            seqs = [s for m, s in readings if m == f"m{i}"]
            assert seqs == list(range(len(seqs)))  # complete and in order, no gaps, no duplicates
        kinds = {e.kind for e in events(sub)}
        assert {EventKind.GATEWAY_STARTED, EventKind.COMMAND_REJECTED} <= kinds
        last = sub.opened(GatewayStatus, "/up/status")[-1]
        assert last.online is False  # graceful shutdown published it
        assert last.lines[0].transactions > 0
    finally:
        sub.close()


async def test_dead_meter_is_reported_and_does_not_stall_the_line(
    mqtt_broker: tuple[str, int], unique_prefix: str, tmp_path: Path, sim: LineHandle
) -> None:
    host, port = mqtt_broker
    sim.meters[2].faults.set(no_reply=True)
    line = sim_line_config(sim.url, sim.meters, interval_s=0.0, offline_after=2, backoff_max_s=2)
    config = make_config(tmp_path, port, unique_prefix, lines=(line,))
    sub = Subscriber(host, port, f"{unique_prefix}/gw/+/up/events", client_id=f"dead-{unique_prefix[-10:]}")
    try:
        async with daemon(config) as d:
            worker = d.workers["l1"]
            await until(lambda: worker.plans["m2"].online is False)
            start = {m: p.polls for m, p in worker.plans.items()}
            failures0 = worker.plans["m2"].failures
            t0 = asyncio.get_running_loop().time()
            await asyncio.sleep(4.0)
            elapsed = asyncio.get_running_loop().time() - t0
            polls = {m: p.polls - start[m] for m, p in worker.plans.items()}
            dead_attempts = worker.plans["m2"].failures - failures0
            budget = worker.bus.no_reply_budget(20)
            # healthy meters keep the line: a read + a state read per poll, about 0.2 s each at 2400 bps
            healthy_cycle = 3 * 2 * worker.bus.wire_time(44)
            # the dead meter may cost its no-reply budget per attempt, nothing more
            expected = (elapsed - dead_attempts * budget) / healthy_cycle
            for m in ("m0", "m1", "m3"):
                assert polls[m] >= 0.6 * expected, (polls, expected)
            assert polls["m2"] == 0
            assert dead_attempts <= 4  # backed off (1 s, then 2 s), not retried every cycle
            assert worker.stats().meters_offline == 1
            sim.meters[2].faults.clear()
            await until(lambda: worker.plans["m2"].online is True, within=10)
            await asyncio.to_thread(sub.wait, lambda: EventKind.METER_ONLINE in {e.kind for e in events(sub)})
        offline = [e for e in events(sub) if e.kind == EventKind.METER_OFFLINE]
        assert [e.meter for e in offline] == ["m2"]
    finally:
        sub.close()


async def test_autonomy_trips_when_offline_and_reports_on_reconnect(tmp_path: Path, sim: LineHandle) -> None:
    with Mosquitto(tmp_path / "broker") as broker:
        config = make_config(
            tmp_path / "gw",
            broker.port,
            "mf/v1",
            lines=(sim_line_config(sim.url, sim.meters, interval_s=0.3),),
        )
        topics = Topics("gw-test")
        sub = Subscriber(broker.host, broker.port, "mf/v1/gw/+/up/#", client_id="cloud")
        horizons = {
            "m0": CreditHorizon(quantity=Quantity.ENERGY_TOTAL_KWH, limit=Decimal("50")),  # used up
            "m1": CreditHorizon(quantity=Quantity.ENERGY_TOTAL_KWH, limit=Decimal("50"), protected=True),
            "m3": CreditHorizon(quantity=Quantity.ENERGY_TOTAL_KWH, limit=Decimal("100000")),  # plenty left
        }
        now = datetime.now(UTC)
        cfg = GatewayConfig(
            gateway="gw-test",
            version=1,
            issued_at=now,
            expires_at=now + timedelta(days=1),
            horizons=horizons,
            offline_after_s=10,
        )
        sub.publish(topics.config, seal_message(cfg, kid="k1", key=TEST_KEY.encode()), retain=True)
        try:
            async with daemon(config) as d:
                await until(lambda: d.autonomy.config is not None)
                await until(lambda: len(sub.readings()) >= 4)
                assert not sim.meters[0].relay_open  # online: the cloud decides, not the gateway
                broker.stop()
                await until(lambda: sim.meters[0].relay_open, within=25)  # > offline_after_s = 10
                assert (await d.status()).autonomous is True
                assert not sim.meters[1].relay_open  # protected
                assert not sim.meters[3].relay_open  # horizon not reached
                broker.start()
                await asyncio.to_thread(
                    sub.wait, lambda: any(e.kind == EventKind.AUTONOMY_TRIP for e in events(sub)), 30
                )
            trips = [e for e in events(sub) if e.kind == EventKind.AUTONOMY_TRIP]
            assert [t.meter for t in trips] == ["m0"]
            assert trips[0].detail["observed"] == "open"
            assert trips[0].detail["limit"] == "50"
        finally:
            sub.close()
