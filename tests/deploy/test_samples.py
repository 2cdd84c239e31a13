"""Sample configurations work as shipped, and the docs say what a newcomer needs before the commands.

- ``deploy/edge/edge-local.toml``: a gateway on one machine with a local Mosquitto; validated as it is,
  and a daemon started from it (its data dir and id moved into the test's own, as an installer would
  with ``MF_GATEWAY__*``) connects to the machine's broker;
- ``deploy/sim/site.toml`` runs real-time meter clocks (relay commands are not refused for a clock
  running ahead) and explains fast clocks as an option;
- the README says how ``meterflow`` gets on the PATH.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import pytest

from edge.config import load_config
from edge.daemon import Daemon
from firmware_sim.config import load_site
from tests.waiting import until

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "deploy" / "edge" / "edge-local.toml"
SITE = ROOT / "deploy" / "sim" / "site.toml"


def test_local_broker_sample_is_valid_and_matches_the_sim_site() -> None:
    config = load_config(LOCAL, env=False)
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.tls) == ("127.0.0.1", 1883, None)
    assert not config.meters()  # they come from the cloud after `edge register`
    site = load_site(SITE)
    floor1 = next(line for line in site.lines if line.name == "floor1")
    assert config.lines[0].url == f"socket://127.0.0.1:{floor1.tcp_port}"
    assert (config.lines[0].baudrate, config.lines[0].parity) == (floor1.baudrate, floor1.parity)


@pytest.mark.services
async def test_local_broker_sample_connects_as_shipped(
    mqtt_broker: tuple[str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host, port = mqtt_broker
    assert (host, port) == ("127.0.0.1", 1883)  # the sample's broker is the machine's
    monkeypatch.setenv("MF_GATEWAY__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MF_GATEWAY__ID", f"gw-local-{uuid.uuid4().hex[:6]}")
    monkeypatch.setenv("MF_GATEWAY__SIGNING_KEY", "k" * 64)  # as `edge register` would have stored one
    daemon = Daemon(load_config(LOCAL))
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await until(daemon.uplink.connected.is_set, what="the sample's gateway connected to the broker")
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


def test_sim_sample_runs_real_time_clocks_with_fast_clocks_explained() -> None:
    assert load_site(SITE).time_scale == 1.0
    text = SITE.read_text(encoding="utf-8")
    assert re.search(r"^# Fast clocks .*time_scale = 60\.0", text, re.MULTILINE)
    assert "refuses relay" in text


def test_readme_says_how_to_get_meterflow_on_the_path() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "source .venv/bin/activate" in text
    assert ".venv/bin/meterflow" in text
