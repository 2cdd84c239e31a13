"""Issue 9, attack 1, with the real daemon, simulated meters and a real Mosquitto.

A client with broker access publishes a retained ``down/config`` issued in 2099 with every credit
horizon at 0. Before issue 9 the gateway kept it, ignored every genuine config after it as "older",
and tripped every meter as soon as the broker went away. Now: the forgery is refused (and reported to
the cloud), the meters keep their supply through an outage, the genuine config still applies (and
trips the meter whose money is gone), and a restart keeps the version in force.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from edge.devbroker import Mosquitto
from firmware_sim.line import SimLine
from firmware_sim.meters import Ddsy1352Sim
from firmware_sim.serve import LineHandle, run_line
from protocol.contract import (
    CreditHorizon,
    Event,
    EventBatch,
    EventKind,
    GatewayConfig,
    Quantity,
    Topics,
    encode,
    seal_message,
)
from tests.edge.mqtt_helpers import KEY, Subscriber, make_config, sim_line_config
from tests.edge.test_daemon_e2e import daemon
from tests.waiting import until

pytestmark = pytest.mark.services
KWH = Quantity.ENERGY_TOTAL_KWH


@pytest.fixture
def sim() -> Iterator[LineHandle]:
    meters = [Ddsy1352Sim(f"0000000002{i:02d}", initial_kwh=Decimal(100 + i)) for i in range(2)]
    with run_line(SimLine(2400, "E", meters, turnaround_s=0.02, name="sim"), pty=False) as handle:
        yield handle






def config_message(
    version: int, issued: datetime, expires: datetime, **horizons: CreditHorizon
) -> GatewayConfig:
    return GatewayConfig(
        gateway="gw-test",
        version=version,
        issued_at=issued,
        expires_at=expires,
        horizons=horizons,
        offline_after_s=10,
    )


def events(sub: Subscriber) -> list[Event]:
    return [e for batch in sub.opened(EventBatch, "/up/events") for e in batch.events]


async def test_forged_2099_config_is_refused_and_trips_nothing(tmp_path: Path, sim: LineHandle) -> None:
    with Mosquitto(tmp_path / "broker") as broker:
        config = make_config(
            tmp_path / "gw",
            broker.port,
            "mf/v1",
            lines=(sim_line_config(sim.url, sim.meters, interval_s=0.2),),
            offline_after_s=1.0,  # without a config from the cloud: autonomous 1 s after losing the broker
        )
        topics = Topics("gw-test")
        cloud = Subscriber(broker.host, broker.port, "mf/v1/gw/+/up/#", client_id="cloud")
        attacker = Subscriber(broker.host, broker.port, "nothing/#", client_id="attacker")
        zero = CreditHorizon(quantity=KWH, limit=Decimal(0))
        y2099 = datetime(2099, 1, 1, tzinfo=UTC)
        forged = config_message(2**62, y2099, y2099 + timedelta(days=365), m0=zero, m1=zero)
        now = datetime.now(UTC)
        try:
            # the attack as it was: unsigned; then sealed with a made-up key; the last one is retained
            attacker.publish(topics.config, encode(forged), retain=True)
            attacker.publish(
                topics.config,
                seal_message(forged, kid="k1", key=b"not-the-gateway-key-at-all-000000"),
                retain=True,
            )
            async with daemon(config) as d:
                await until(lambda: {EventKind.CONFIG_REJECTED} <= {e.kind for e in events(cloud)})
                assert d.autonomy.config is None
                rejected = [e for e in events(cloud) if e.kind == EventKind.CONFIG_REJECTED]
                assert "does not verify" in rejected[0].detail["reason"]
                # the broker goes away: autonomous, with no horizon in force nothing is tripped
                worker = d.workers["l1"]
                broker.stop()
                await until(lambda: d.autonomy.active(d.uplink.offline_for()))
                polls = {m: p.polls for m, p in worker.plans.items()}
                await until(lambda: all(worker.plans[m].polls >= polls[m] + 3 for m in polls))
                assert not any(m.relay_open for m in sim.meters)
                broker.start()
                await until(lambda: d.uplink.connected.is_set() and cloud.client.is_connected())
                # the genuine config applies: m0 has used up its money (limit below its register)
                genuine = config_message(
                    1, now, now + timedelta(days=1), m0=CreditHorizon(quantity=KWH, limit=Decimal("50")),
                    m1=CreditHorizon(quantity=KWH, limit=Decimal("100000")),
                )  # fmt: skip
                cloud.publish(topics.config, seal_message(genuine, kid="k1", key=KEY.encode()), retain=True)
                await until(lambda: d.autonomy.config is not None and d.autonomy.config.version == 1)
                newer = config_message(
                    2, now, now + timedelta(days=1), m0=CreditHorizon(quantity=KWH, limit=Decimal("50")),
                    m1=CreditHorizon(quantity=KWH, limit=Decimal("100000")),
                )  # fmt: skip
                cloud.publish(topics.config, seal_message(newer, kid="k1", key=KEY.encode()), retain=True)
                await until(lambda: d.autonomy.config is not None and d.autonomy.config.version == 2)
                broker.stop()
                await until(lambda: sim.meters[0].relay_open, within=30)  # > offline_after_s = 10
                assert not sim.meters[1].relay_open
                broker.start()
            # a restart (with the broker away, so autonomy.json is the only source) keeps version 2,
            # and the older genuine v1, replayed, is refused
            broker.stop()
            async with daemon(config) as d:
                await until(lambda: d.autonomy.config is not None)
                assert d.autonomy.config is not None
                assert d.autonomy.config.version == 2
                broker.start()
                await until(lambda: d.uplink.connected.is_set() and cloud.client.is_connected())
                cloud.publish(topics.config, seal_message(genuine, kid="k1", key=KEY.encode()), retain=True)
                await until(
                    lambda: any(
                        "v1 is not newer than v2" in str(e.detail.get("reason"))
                        for e in events(cloud)
                        if e.kind == EventKind.CONFIG_REJECTED
                    )
                )
                assert d.autonomy.config.version == 2
        finally:
            cloud.close()
            attacker.close()
