"""Local-prepay top-ups through the background workers and the real Mosquitto: a recharge goes out as a
signed RECHARGE command, the gateway's ack closes it, a redelivered event writes nothing twice, and a
mismatched purchase count raises the operator's alarm."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.events import LocalEventBus
from cloud.models import Alarm, MeterState
from cloud.runtime import RuntimeOptions, run_background
from cloud.services.arrears import TOPUP_FAILED
from cloud.settings import load_settings
from protocol.contract import AckStatus, Action, verify_command
from tests.cloud.flowkit import KEY, commands
from tests.cloud.test_control_mqtt import Gateway
from tests.cloud.test_topups import local_site, pay, reading_with_count, recharge_ack
from tests.waiting import until

pytestmark = pytest.mark.services


async def test_recharge_written_to_a_local_prepay_meter_over_mqtt(
    engine: Engine,
    session_factory: sessionmaker[Session],
    db_url: str,
    mqtt_broker: tuple[str, int],
    unique_prefix: str,
) -> None:
    host, port = mqtt_broker
    site = local_site(session_factory, prefix=unique_prefix)
    meter_id, account_id = site.meters["m1"], site.accounts["m1"]
    settings = load_settings(
        database_url=db_url, mqtt_host=host, mqtt_port=port, mqtt_prefix=unique_prefix, mqtt_shared=True
    )
    bus = LocalEventBus()
    stop = asyncio.Event()
    options = RuntimeOptions(jobs=False, client_id=f"cloud-{uuid.uuid4().hex[:8]}", tick_s=0.2)
    worker = asyncio.create_task(
        run_background(settings, stop, event_bus=bus, engine=engine, options=options)
    )
    gw = Gateway(host, port, unique_prefix, site.gateway)
    await asyncio.to_thread(gw.link.start)

    def seen() -> bool:
        with session_factory() as s:
            state = s.get(MeterState, meter_id)
            return state is not None and state.last_seen is not None

    def statuses() -> list[str]:
        return [c.status for c in commands(session_factory, meter_id)]

    try:
        await asyncio.sleep(0.5)  # the ingest's subscription is acknowledged inside run_background
        await asyncio.to_thread(gw.link.publish, *reading_with_count(site, 1, datetime.now(UTC), 3))
        await until(seen)

        first_key = await asyncio.to_thread(pay, session_factory, site, 1_000, bus)
        await until(lambda: len(gw.commands()) >= 1, within=5)  # event-driven, not a sweep
        first = gw.commands()[0]
        assert first.action is Action.RECHARGE
        assert first.params == {"amount_fen": 1_000, "purchase_count": 4, "recharge": first_key}
        verify_command(first, KEY.encode(), datetime.now(UTC))

        bus.publish("balance_changed", {"account_id": account_id})  # a redelivered event
        await asyncio.sleep(1.0)
        assert len(gw.commands()) == 1
        ack = recharge_ack(
            site, first, AckStatus.DONE, "recharged 10.00 yuan, purchase count 4", datetime.now(UTC)
        )
        await asyncio.to_thread(gw.link.publish, *ack)
        await until(lambda: statuses() == ["acked_done"])

        second_key = await asyncio.to_thread(pay, session_factory, site, 500, bus)
        await until(lambda: len(gw.commands()) >= 2, within=5)
        second = gw.commands()[1]
        assert second.params == {"amount_fen": 500, "purchase_count": 5, "recharge": second_key}
        detail = "meter m1 refused recharge: purchase count is 7, the recharge expects 5"
        ack = recharge_ack(site, second, AckStatus.FAILED, detail, datetime.now(UTC))
        await asyncio.to_thread(gw.link.publish, *ack)
        await until(lambda: statuses() == ["acked_done", "abandoned"])
        with session_factory() as s:
            alarm = s.scalars(select(Alarm).where(col(Alarm.kind) == TOPUP_FAILED)).one()
        assert alarm.detail["recharge"] == second_key
        assert alarm.detail["observed_count"] == 7
        await asyncio.sleep(1.0)  # sweeps run every 0.2 s: nothing is re-sent
        assert len(gw.commands()) == 2
    finally:
        stop.set()
        await asyncio.wait_for(worker, timeout=20)
        await asyncio.to_thread(gw.link.stop)
