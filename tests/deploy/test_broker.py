"""The shipped broker (deploy/mosquitto/) against an attacker with broker access.

Every test runs the real Mosquitto from the shipped mosquitto.conf and ACLs (paths and ports moved,
tests/deploy/shipped_broker.py), a TLS certificate from a private test CA, accounts made by the
operator's tool, and the cloud's own MQTT adapter (cloud/integrations/mqtt.py) as the cloud.
"Receives nothing" is never waited for: each attack is followed by a legitimate marker message on
the same path, and once the marker has arrived every earlier message would have too.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from cloud.integrations.mqtt import MqttError
from protocol.contract import Quantity, Reading, ReadingBatch, RelayState, Topics, encode
from tests.deploy.shipped_broker import SHIPPED, CloudSide, Probe, ShippedBroker
from tests.waiting import wait_for

GROUP = "private-share-group-5f0c2a9e"  # what `meterflow broker add --cloud` would have made
# "meterflow-cloud": a gateway registered under the cloud's username gets a gateway's rights only
GATEWAYS = [*(f"gw-{c}" for c in "abcdefghijklmnop"), "meterflow-cloud"]


def require_mosquitto() -> None:
    if shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists():
        return
    if os.environ.get("MF_REQUIRE_SERVICES") == "1":
        pytest.fail("mosquitto is not installed and MF_REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip("mosquitto is not installed")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShippedBroker]:
    """One broker for the module; each test uses gateways of its own, so none sees another's traffic."""
    require_mosquitto()
    b = ShippedBroker(tmp_path_factory.mktemp("broker"))
    for gateway in GATEWAYS:
        b.add_gateway(gateway)
    b.add_cloud()
    with b:
        yield b


@pytest.fixture
def cloud(broker: ShippedBroker, request: pytest.FixtureRequest) -> Iterator[CloudSide]:
    side = broker.cloud_link(f"cloud-{request.node.name}"[:60], group=GROUP)
    yield side
    side.close()


def t(gateway: str) -> Topics:
    return Topics(gateway)


# --- who may connect -------------------------------------------------------------------------------
@pytest.mark.services
def test_anonymous_wrong_password_and_the_wrong_listener_are_refused(broker: ShippedBroker) -> None:
    gw, cloud_user = broker.passwords["gw-a"], broker.cloud_passwords["meterflow-cloud"]
    attempts = {
        "anonymous on the gateways' listener": Probe(broker.gateway_port, None, None, ca_file=broker.ca_file),
        "wrong password": Probe(broker.gateway_port, "gw-a", "not-the-password", ca_file=broker.ca_file),
        "unknown gateway": Probe(broker.gateway_port, "gw-zz", gw, ca_file=broker.ca_file),
        "another gateway's password": Probe(broker.gateway_port, "gw-b", gw, ca_file=broker.ca_file),
        "anonymous on the cloud's listener": Probe(broker.cloud_port, None, None, ca_file=broker.ca_file),
        "a gateway on the cloud's listener": Probe(broker.cloud_port, "gw-a", gw, ca_file=broker.ca_file),
        "the cloud on the gateways' listener": Probe(
            broker.gateway_port, "meterflow-cloud", cloud_user, ca_file=broker.ca_file
        ),
    }
    try:
        refused = {what: probe.connack for what, probe in attempts.items()}
        assert refused == dict.fromkeys(attempts, "Not authorized")
        assert "not authorised" in broker.log()
        ok = broker.gateway("gw-a")
        assert ok.accepted  # the broker still serves the rightful owner
        ok.close()
    finally:
        for probe in attempts.values():
            probe.close()


@pytest.mark.services
@pytest.mark.parametrize("listener", ["gateway_port", "cloud_port"])
def test_plain_tcp_to_a_tls_listener_gets_no_mqtt(broker: ShippedBroker, listener: str) -> None:
    port = getattr(broker, listener)
    # an MQTT 3.1.1 CONNECT in clear text: the broker must close the connection without a CONNACK
    connect = bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 60, 0, 0])
    with socket.create_connection((broker.host, port), timeout=10) as sock:
        sock.sendall(connect)
        try:
            answer = sock.recv(16)
        except ConnectionResetError:
            answer = b""
    assert answer == b"" or answer[0] != 0x20  # EOF or a TLS alert, never a CONNACK
    # paho with valid credentials but without TLS gets no further
    probe = Probe(port, "gw-a", broker.passwords["gw-a"], tls=False)
    try:
        assert probe.connack is None
        assert probe.disconnects
    finally:
        probe.close()


@pytest.mark.services
def test_a_client_that_trusts_another_ca_does_not_talk_to_the_broker(
    broker: ShippedBroker, tmp_path: Path
) -> None:
    from edge.devbroker import make_tls_files

    other_ca = make_tls_files(tmp_path / "other")["ca"]
    for port in (broker.gateway_port, broker.cloud_port):
        context = ssl.create_default_context(cafile=str(other_ca))
        with (
            socket.create_connection((broker.host, port), timeout=10) as raw,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            context.wrap_socket(raw, server_hostname=broker.host)


# --- what a gateway may do -------------------------------------------------------------------------
@pytest.mark.services
def test_a_gateway_publishes_its_own_uplink_and_nothing_else(broker: ShippedBroker, cloud: CloudSide) -> None:
    a, b = "gw-a", "gw-b"
    attacker = broker.gateway(a)
    victim = broker.gateway(b)
    try:
        victim.subscribe(t(b).commands)
        victim.subscribe(t(b).config)
        assert attacker.publish(t(a).readings, b"own reading") == "Success"
        cloud.wait(t(a).readings, b"own reading")
        forged = {
            t(b).readings: False,  # readings in another gateway's name
            t(b).status: True,  # a retained "online" for another gateway
            t(b).acks: False,
            t(b).commands: False,  # commands to another gateway
            t(b).config: True,  # a retained config for another gateway
            t(a).commands: False,  # commands to itself: only the cloud writes down/
            t(a).config: True,
            "mf/v1/gw/gw-b": False,
            "mf/v1/cloud/anything": False,
            "$SYS/broker/uptime": False,
            "other/prefix": False,
        }
        answers = {
            topic: attacker.publish(topic, b"forged", retain=retain) for topic, retain in forged.items()
        }
        assert answers == dict.fromkeys(forged, "Not authorized")
        assert attacker.publish(t(a).events, b"marker") == "Success"
        cloud.wait(t(a).events, b"marker")
        assert b"forged" not in cloud.payloads()
        # nothing was retained either: a new subscriber to gw-b's downlink gets only what the cloud sends
        late = broker.gateway(b, client_id="late")  # the broker names it gw-b whatever it asks for
        late.subscribe(f"mf/v1/gw/{b}/down/#")
        cloud.link.publish(t(b).commands, b"from the cloud")
        wait_for(lambda: late.got(t(b).commands) == [b"from the cloud"])
        assert not any(p == b"forged" for _, p, _ in late.messages + victim.messages)
        late.close()
    finally:
        attacker.close()
        victim.close()


@pytest.mark.services
def test_a_gateway_reads_only_its_own_downlink_whatever_it_subscribes(
    broker: ShippedBroker, cloud: CloudSide
) -> None:
    a, b = "gw-c", "gw-d"
    snoop = broker.gateway(a)
    other = broker.gateway(b)
    try:
        filters = [
            t(b).commands,
            t(b).config,
            "mf/v1/gw/+/down/#",
            "mf/v1/gw/+/up/#",
            "#",
            "$share/snoop/mf/v1/gw/+/down/#",
            "$SYS/#",
        ]
        for topic_filter in filters:
            # Mosquitto 2.0 grants every SUBSCRIBE (its ACL file is not consulted for subscriptions);
            # what protects the topics is the read check on every message delivered, shown below
            snoop.subscribe(topic_filter)
        cloud.link.publish(t(b).config, b"config of b", retain=True)
        cloud.link.publish(t(b).commands, b"command for b")
        assert other.publish(t(b).readings, b"reading of b") == "Success"
        assert other.publish(t(b).status, b"status of b", retain=True) == "Success"
        cloud.link.publish(t(a).commands, b"marker for a")
        wait_for(lambda: b"marker for a" in snoop.got(t(a).commands))
        assert {topic for topic, _, _ in snoop.messages} == {t(a).commands}
        # retained messages of another gateway are not handed out on a new subscription either
        cloud.link.publish(t(a).config, b"config of a", retain=True)
        snoop.subscribe(t(b).config)
        snoop.subscribe(t(b).status)
        snoop.subscribe(t(a).config)
        wait_for(lambda: b"config of a" in snoop.got(t(a).config))
        assert not [m for m in snoop.messages if m[0].startswith(f"mf/v1/gw/{b}/")]
    finally:
        cloud.link.publish(t(b).config, b"", retain=True)  # clear the retained messages
        cloud.link.publish(t(a).config, b"", retain=True)
        snoop.close()
        other.close()


@pytest.mark.services
def test_a_gateway_gets_its_own_retained_config_even_after_a_broker_restart(tmp_path: Path) -> None:
    require_mosquitto()
    broker = ShippedBroker(tmp_path / "broker")
    broker.add_gateway("gw-0001")
    broker.add_gateway("gw-0002")
    broker.add_cloud()
    with broker:
        publisher = broker.cloud_link("cloud-pub", group=None)
        publisher.link.publish(t("gw-0001").config, b"config of 0001", retain=True)
        publisher.link.publish(t("gw-0002").config, b"config of 0002", retain=True)
        publisher.close()
    with broker:  # stopped and started again: the retained messages come back from persistence
        gateway = broker.gateway("gw-0001")
        other = broker.gateway("gw-0002")
        try:
            other.subscribe(t("gw-0001").config)  # someone else's first
            other.subscribe(t("gw-0002").config)
            gateway.subscribe("mf/v1/gw/gw-0001/down/#")
            wait_for(lambda: gateway.got(t("gw-0001").config) == [b"config of 0001"])
            assert gateway.messages == [(t("gw-0001").config, b"config of 0001", True)]
            wait_for(lambda: other.got(t("gw-0002").config) == [b"config of 0002"])
            assert other.got(t("gw-0001").config) == []
        finally:
            gateway.close()
            other.close()


@pytest.mark.services
def test_a_gateways_will_reaches_the_cloud_and_cannot_speak_for_another(
    broker: ShippedBroker, cloud: CloudSide
) -> None:
    a, b = "gw-e", "gw-f"
    dying = broker.gateway(a, will=t(a).status)
    dying.vanish()  # power cut: no DISCONNECT, the broker publishes the will
    cloud.wait(t(a).status, b"will of probe")
    forger = broker.gateway(a, will=t(b).status)
    forger.vanish()
    # the same account again (the broker forces the same client id): any will of the connection
    # before was dealt with before this one is accepted
    again = broker.gateway(a)
    assert again.publish(t(a).status, b"marker") == "Success"
    cloud.wait(t(a).status, b"marker")
    again.close()
    assert cloud.got(t(b).status) == []


@pytest.mark.services
def test_claiming_another_client_id_knocks_nobody_off(broker: ShippedBroker, cloud: CloudSide) -> None:
    victim = broker.gateway("gw-g", client_id="gw-g")
    impostors = [
        broker.gateway("gw-h", client_id="gw-g"),  # the victim's client id
        broker.gateway("gw-h", client_id=cloud.link.config.client_id),  # the cloud's
    ]
    try:
        assert all(p.accepted for p in impostors)  # logged in, but as gw-h: the broker set the id
        assert victim.publish(t("gw-g").readings, b"still here") == "Success"
        cloud.wait(t("gw-g").readings, b"still here")
        assert victim.disconnects == []
        assert cloud.link.connected
    finally:
        victim.close()
        for p in impostors:
            p.close()


@pytest.mark.services
def test_an_oversized_packet_disconnects_its_sender_and_goes_nowhere(
    broker: ShippedBroker, cloud: CloudSide
) -> None:
    limit = max_packet_size()
    big = broker.gateway("gw-i")
    big.client.publish(t("gw-i").readings, b"x" * limit, qos=1)
    wait_for(lambda: bool(big.disconnects), what="disconnect of the sender")
    assert big.pubacks == {}  # nothing acknowledged: a gateway would keep the batch in its outbox
    big.close()
    ok = broker.gateway("gw-i")
    try:
        large = b"y" * (3 * 1024 * 1024)  # above any real batch, still under the limit
        assert ok.publish(t("gw-i").readings, large) == "Success"
        wait_for(lambda: cloud.got(t("gw-i").readings) == [large])
    finally:
        ok.close()


@pytest.mark.services
def test_a_gateway_named_like_the_cloud_gets_a_gateways_rights(
    broker: ShippedBroker, cloud: CloudSide
) -> None:
    namesake = broker.gateway("meterflow-cloud")
    try:
        namesake.subscribe("mf/v1/gw/+/up/#")
        assert namesake.publish(t("gw-p").commands, b"forged") == "Not authorized"
        assert namesake.publish(t("gw-p").readings, b"forged") == "Not authorized"
        assert namesake.publish(t("meterflow-cloud").events, b"marker") == "Success"
        cloud.wait(t("meterflow-cloud").events, b"marker")
        assert namesake.messages == []  # its own up/ is not readable to it either
        assert b"forged" not in cloud.payloads()
    finally:
        namesake.close()


# --- what the cloud may do -------------------------------------------------------------------------
@pytest.mark.services
def test_the_cloud_commands_any_gateway_and_its_replicas_share_every_uplink(broker: ShippedBroker) -> None:
    g, h = "gw-j", "gw-k"
    replicas = [broker.cloud_link(f"replica-{i}", group=GROUP) for i in range(2)]
    gateways = {name: broker.gateway(name) for name in (g, h)}
    try:
        for name, probe in gateways.items():
            probe.subscribe(f"mf/v1/gw/{name}/down/#")
        replicas[0].link.publish(t(g).commands, b"command for j")
        replicas[1].link.publish(t(h).commands, b"command for k")
        replicas[1].link.publish(t(h).config, b"config for k", retain=True)
        wait_for(lambda: gateways[g].got(t(g).commands) == [b"command for j"])
        wait_for(lambda: gateways[h].got(t(h).config) == [b"config for k"])
        assert gateways[h].got(t(h).commands) == [b"command for k"]
        assert {m[0] for m in gateways[g].messages} == {t(g).commands}
        sent = []
        for i in range(10):
            for name, probe in gateways.items():
                payload = f"{name} reading {i}".encode()
                assert probe.publish(t(name).readings, payload) == "Success"
                sent.append(payload)

        def readings(replica: CloudSide) -> list[bytes]:
            return replica.got(t(g).readings) + replica.got(t(h).readings)

        wait_for(lambda: sum(len(readings(r)) for r in replicas) >= len(sent))
        got = [p for r in replicas for p in readings(r)]
        assert sorted(got) == sorted(sent)  # each message once, to one replica
        assert all(readings(r) for r in replicas)  # and both replicas took a share
        # the cloud's rights end at up/ (read) and down/ (write)
        for topic in (t(g).status, t(g).readings, "mf/v1/other", "$SYS/broker/x"):
            with pytest.raises(MqttError, match="refused by the broker: Not authorized"):
                replicas[0].link.publish(topic, b"cloud out of bounds")
    finally:
        replicas[1].link.publish(t(h).config, b"", retain=True)
        for r in replicas:
            r.close()
        for p in gateways.values():
            p.close()


# --- shared subscriptions --------------------------------------------------------------------------
def _divert(broker: ShippedBroker, cloud: CloudSide, *, gateway: str, victim: str, group: str) -> list[bytes]:
    """``gateway`` joins ``group`` for all uplinks while ``victim`` sends 8 readings; returns those the
    cloud got. The intruder leaves (UNSUBACK) before a marker is sent, so once the marker arrived at
    the cloud, so had every reading the cloud was ever going to get."""
    intruder = broker.gateway(gateway)
    sender = broker.gateway(victim)
    share = f"$share/{group}/mf/v1/gw/+/up/#"
    try:
        intruder.subscribe(share)
        sent = [f"reading {i}".encode() for i in range(8)]
        for payload in sent:
            assert sender.publish(t(victim).readings, payload) == "Success"
        intruder.unsubscribe(share)
        assert sender.publish(t(victim).events, b"marker") == "Success"
        cloud.wait(t(victim).events, b"marker")
        assert intruder.messages == []  # the ACL's read check stops delivery to the intruder
        return cloud.got(t(victim).readings)
    finally:
        intruder.close()
        sender.close()


@pytest.mark.services
def test_a_gateway_in_the_default_share_group_diverts_nothing(
    broker: ShippedBroker, cloud: CloudSide
) -> None:
    got = _divert(broker, cloud, gateway="gw-l", victim="gw-m", group="meterflow")
    assert got == [f"reading {i}".encode() for i in range(8)]


@pytest.mark.services
def test_mosquitto_lets_a_gateway_into_a_known_share_group(broker: ShippedBroker, cloud: CloudSide) -> None:
    """Why MF_MQTT_SHARE_GROUP must be secret (cloud/settings.py refuses a weak one in production).

    Mosquitto 2.0 does not check SUBSCRIBE against the ACL file, hands each message of a share group
    to the next member in turn, and only then applies the member's read ACL: the intruder's turns are
    dropped, and the gateways have their PUBACKs. If this test ever fails, the broker has started to
    refuse such subscriptions and the group no longer needs to be a secret (docs/security.md).
    """
    got = _divert(broker, cloud, gateway="gw-n", victim="gw-o", group=GROUP)
    assert 0 < len(got) < 8


@pytest.mark.services
def test_the_share_group_stays_out_of_the_broker_log(broker: ShippedBroker, cloud: CloudSide) -> None:
    assert cloud.link.connected  # subscribed with the group (MqttLink.start waits for the SUBACK)
    assert GROUP not in broker.log()


# --- limits that must not bite legitimate traffic ----------------------------------------------------
def max_packet_size() -> int:
    lines = [
        ln
        for ln in (SHIPPED / "mosquitto.conf").read_text().splitlines()
        if ln.startswith("max_packet_size ")
    ]
    assert len(lines) == 1
    return int(lines[0].split()[1])


def test_the_largest_reading_batch_a_gateway_can_build_fits_the_packet_limit() -> None:
    """Every field at its longest (ids of 64, 22-digit values of every quantity, every status flag of
    the drivers): a broker that refused the batch would disconnect the gateway on every retry."""
    reading = Reading(
        meter="m" * 64,
        seq=2**63 - 1,
        ts=datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        values={q: Decimal("-9999999999999999.999999") for q in Quantity},
        relay=RelayState.UNKNOWN,
        status=dict.fromkeys(
            [
                "relay_open",
                "relay_command_open",
                "pre_trip_alarm",
                "prepaid_money",
                "protected",
                "valve_open",
                "battery_low",
                "unit_not_m3",
            ],
            True,
        ),
    )
    batch = ReadingBatch(
        gateway="g" * 64, batch="b" * 64, sent_at=datetime.now(UTC), readings=[reading] * 1000
    )
    packet = len(encode(batch)) + len(Topics("g" * 64).readings) + 16  # + fixed and variable header
    print(f"largest reading batch: {packet} bytes of max_packet_size {max_packet_size()}")
    assert packet < max_packet_size()
