"""The broker of deploy/mosquitto/ run as shipped, with only its paths and ports moved into a test dir.

``ShippedBroker`` renders deploy/mosquitto/mosquitto.conf by replacing each host path and port (and the
``user`` to switch to) and checks that every replacement hit the number of lines it expects, so a
change to the shipped file that these tests no longer cover fails here rather than passing quietly.
The ACL files are copied unchanged; accounts are made by :class:`meterflow.broker.PasswordFile`, the
tool an operator uses. ``Probe`` is a bare paho client that reports what the broker answered (CONNACK,
PUBACK and SUBACK reason codes) so a test can act as a gateway, honest or not.
"""

from __future__ import annotations

import contextlib
import getpass
import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud.integrations.mqtt import MqttConfig, MqttLink, ingest_filter
from edge.devbroker import free_port, make_tls_files, start_mosquitto, stop_mosquitto
from meterflow.broker import DEFAULT_CLOUD_USER, PasswordFile
from tests.waiting import wait_for

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"


class ShippedBroker:
    """mosquitto -c <the shipped config, paths moved>; gateways on ``gateway_port``, cloud on ``cloud_port``."""

    def __init__(self, workdir: Path, *, san: str = "IP:127.0.0.1,DNS:localhost") -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "data").mkdir(exist_ok=True)
        self.tls = make_tls_files(workdir / "tls", san=san)
        self.ca_file = self.tls["ca"]
        self.host = "127.0.0.1"
        self.gateway_port = free_port()
        self.cloud_port = free_port()
        self.pid_file = workdir / "mosquitto.pid"
        self.log_file = workdir / "mosquitto.log"
        self.gateways = PasswordFile(workdir / "gateways.passwd")
        self.cloud = PasswordFile(workdir / "cloud.passwd")
        for name in ("gateways.acl", "cloud.acl"):
            shutil.copyfile(SHIPPED / name, workdir / name)
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(self.render())
        self.proc: subprocess.Popen[bytes] | None = None
        self.passwords: dict[str, str] = {}  # gateway accounts
        self.cloud_passwords: dict[str, str] = {}

    def render(self) -> str:
        text = (SHIPPED / "mosquitto.conf").read_text()
        replacements = [
            # (shipped text, test text, lines it must appear on)
            ("listener 8883\n", f"listener {self.gateway_port} {self.host}\n", 1),
            ("listener 8884\n", f"listener {self.cloud_port} {self.host}\n", 1),
            ("/etc/mosquitto/certs/meterflow-broker.crt", str(self.tls["cert"]), 2),
            ("/etc/mosquitto/certs/meterflow-broker.key", str(self.tls["key"]), 2),
            ("/etc/mosquitto/meterflow/", f"{self.workdir}/", 4),
            ("persistence_location /var/lib/mosquitto/", f"persistence_location {self.workdir}/data/", 1),
            ("pid_file /run/mosquitto/mosquitto.pid", f"pid_file {self.pid_file}", 1),
            ("log_dest stderr", f"log_dest file {self.log_file}", 1),
            # as root, mosquitto would switch to an account that cannot read this private test dir
            ("\nuser mosquitto\n", f"\nuser {getpass.getuser()}\n", 1),
        ]
        for old, new, count in replacements:
            assert text.count(old) == count, (
                f"deploy/mosquitto/mosquitto.conf: {old!r} is not on {count} line(s)"
            )
            text = text.replace(old, new)
        return text

    def add_gateway(self, gateway: str) -> str:
        self.passwords[gateway] = self.gateways.add(gateway, replace=False)
        return self.passwords[gateway]

    def add_cloud(self, username: str = DEFAULT_CLOUD_USER) -> str:
        self.cloud_passwords[username] = self.cloud.add(username, replace=False)
        return self.cloud_passwords[username]

    def gateway(self, gateway: str, **kwargs: Any) -> Probe:
        """A client logged in as ``gateway`` on the gateways' listener."""
        return Probe(self.gateway_port, gateway, self.passwords[gateway], ca_file=self.ca_file, **kwargs)

    def cloud_link(
        self, client_id: str, *, group: str | None, username: str = DEFAULT_CLOUD_USER
    ) -> CloudSide:
        return CloudSide(self, client_id, group=group, username=username)

    def start(self, timeout: float = 10.0) -> None:
        for file in (self.gateways, self.cloud):
            file._ensure()
        ports = (self.gateway_port, self.cloud_port)
        self.proc = start_mosquitto(self.conf, self.host, ports, timeout=timeout, log_file=self.log_file)

    def stop(self) -> None:
        if self.proc is not None:
            stop_mosquitto(self.proc)
        self.proc = None

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def __enter__(self) -> ShippedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()




class Probe:
    """A paho MQTT 5 client that records every answer of the broker; no reconnects, no retries."""

    def __init__(
        self,
        port: int,
        username: str | None,
        password: str | None,
        *,
        client_id: str = "probe",
        ca_file: Path | None = None,
        tls: bool = True,
        will: str | None = None,
        host: str = "127.0.0.1",
        clean_start: bool = True,
    ) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.subacks: list[list[str]] = []
        self.unsubacks = 0
        self.pubacks: dict[int, str] = {}
        self.disconnects: list[str] = []
        self.connack: str | None = None
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            reconnect_on_failure=False,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls:
            self.client.tls_set_context(ssl.create_default_context(cafile=str(ca_file) if ca_file else None))
        if will is not None:
            self.client.will_set(will, b"will of " + client_id.encode(), qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_unsubscribe = self._on_unsubscribe
        self.client.on_disconnect = self._on_disconnect
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0 if clean_start else 3600
        self.client.connect(host, port, 30, clean_start=clean_start, properties=props)
        self.client.loop_start()
        wait_for(lambda: self.connack is not None or bool(self.disconnects), what="CONNACK")

    @property
    def accepted(self) -> bool:
        return self.connack == "Success"

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.connack = str(rc)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, rcs: Any, _p: Any) -> None:
        with self.lock:
            self.subacks.append([str(r) for r in rcs])

    def _on_unsubscribe(self, *_: Any) -> None:
        with self.lock:
            self.unsubacks += 1

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with self.lock:
            self.pubacks[mid] = str(rc)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        with self.lock:
            self.disconnects.append(str(rc))

    def subscribe(self, topic_filter: str) -> list[str]:
        before = len(self.subacks)
        self.client.subscribe(topic_filter, qos=1)
        wait_for(lambda: len(self.subacks) > before, what=f"SUBACK for {topic_filter}")
        return self.subacks[before]

    def unsubscribe(self, topic_filter: str) -> None:
        """Returns once the broker has answered (UNSUBACK): the subscription is gone from then on."""
        before = self.unsubacks
        self.client.unsubscribe(topic_filter)
        wait_for(lambda: self.unsubacks > before, what=f"UNSUBACK for {topic_filter}")

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> str:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        wait_for(lambda: info.mid in self.pubacks, what=f"PUBACK for {topic}")
        return self.pubacks[info.mid]

    def got(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t == topic]

    def vanish(self) -> None:
        """Drop the TCP connection without DISCONNECT, as a gateway losing power does: the will goes out."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


class CloudSide:
    """The cloud's own MQTT adapter (cloud/integrations/mqtt.py) on the cloud's listener, as the ingest
    subscribes (``$share/<group>/mf/v1/gw/+/up/#``; ``group=None``: no subscription, publishing only)."""

    def __init__(self, broker: ShippedBroker, client_id: str, *, group: str | None, username: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        config = MqttConfig(
            host=broker.host,
            port=broker.cloud_port,
            client_id=client_id,
            username=username,
            password=broker.cloud_passwords[username],
            tls=True,
            ca_file=broker.ca_file,
            clean_start=True,  # no session left behind in the share group when the test ends
            session_expiry_s=0,
        )
        subscriptions = [] if group is None else [ingest_filter("mf/v1", shared=True, group=group)]
        self.link = MqttLink(config, subscriptions=subscriptions, handler=self._handle)
        self.link.start()

    def _handle(self, topic: str, payload: bytes) -> None:
        with self.lock:
            self.messages.append((topic, payload))

    def got(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p in self.messages if t == topic]

    def payloads(self) -> list[bytes]:
        with self.lock:
            return [p for _, p in self.messages]

    def wait(self, topic: str, payload: bytes, timeout: float = 15.0) -> None:
        wait_for(lambda: payload in self.got(topic), timeout, what=f"{payload!r} on {topic} at the cloud")

    def close(self) -> None:
        self.link.stop()
