"""The building of the whole-system demo: simulated lines, the gateway's config, the cloud's register.

One table (:data:`ROOMS`) drives all three, so the simulator, the edge daemon and the cloud can never
disagree about which meter is where. Loads are flat (no daily shape) so the demo tells the same story
whatever the hour it is run at.

Why ``TIME_SCALE`` is 120 and not more: the cloud holds (never bills) a reading whose delta exceeds
30 kWh/h × elapsed + 1 kWh (:class:`cloud.domain.readings.ReadingRules`). At 120× a 3 kW room uses
0.1 kWh per wall second, so even a 10 s gap between two polls stays plausible.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from edge.config import EdgeConfig, GatewaySection, LineConfig, MeterConfig, MqttConfig
from firmware_sim.config import SiteConfig, parse_site
from protocol.contract import Quantity

__all__ = [
    "ARREARS_ROOM",
    "ELECTRIC_PRICE_YUAN",
    "GATEWAY_ID",
    "ROOMS",
    "SILENT_GATEWAY_ID",
    "TIME_SCALE",
    "WATER_PRICE_YUAN",
    "DemoMeter",
    "DemoRoom",
    "edge_config",
    "system_site",
]

GATEWAY_ID = "gw-demo-01"
SILENT_GATEWAY_ID = "gw-demo-02"
"""Building 2's gateway: in the cloud's register, unplugged (its offline notice goes to the manager)."""
TIME_SCALE = 120.0  # 1 wall second = 2 simulated minutes
ELECTRIC_PRICE_YUAN = "1.00"  # per kWh, flat (a commercial rate; keeps the arithmetic readable)
WATER_PRICE_YUAN = "5.00"  # per m³
POLL_INTERVAL_S = 1.0
ELECTRIC_LINE = "electric"
WATER_LINE = "water"


@dataclass(frozen=True)
class DemoMeter:
    device_id: str  # the contract id under the gateway (edge MeterConfig.id, cloud Meter.device_id)
    line: str
    model: str
    protocol: str
    address: str
    circuit: int | None = None

    @property
    def kind(self) -> str:
        return "water" if self.protocol == "cjt188" else "electric"


@dataclass(frozen=True)
class DemoRoom:
    room: str
    tenant: str
    account: str
    opening_fen: int
    meters: tuple[DemoMeter, ...]


def _e(device: str, model: str, protocol: str, address: str, circuit: int | None = None) -> DemoMeter:
    return DemoMeter(device, ELECTRIC_LINE, model, protocol, address, circuit)


def _w(device: str, address: str) -> DemoMeter:
    return DemoMeter(device, WATER_LINE, "water_valve", "cjt188", address)


# Room 103 starts with 1.50 yuan on a 3 kW load: about 15 s of supply at the demo's speed. Its meter is
# the Modbus DTSY1352: a DL/T 645 meter checks a control command's validity time against its own
# clock, which the simulator runs TIME_SCALE × fast, so it would (rightly) refuse the cloud's trip.
ARREARS_ROOM = "103"
ROOMS: tuple[DemoRoom, ...] = (
    DemoRoom("101", "张伟 Zhang Wei", "A-101", 10_000,
             (_e("e101", "ddsy1352", "dlt645", "202500000101"), _w("w101", "20250000000301"))),
    DemoRoom("102", "王芳 Wang Fang", "A-102", 8_000,
             (_e("e102", "ddsy1352", "dlt645", "202500000102"), _w("w102", "20250000000302"))),
    DemoRoom(ARREARS_ROOM, "李娜 Li Na", "A-103", 150, (_e("e103", "dtsy1352", "modbus", "11"),)),
    DemoRoom("104", "便利店 Shop", "A-104", 30_000, (_e("e104", "dtsy1352", "dlt645", "202500000204"),)),
    DemoRoom("105", "刘洋 Liu Yang", "A-105", 6_000, (_e("e105", "ddsy1352", "dlt645", "202500000103"),)),
    DemoRoom("201", "陈静 Chen Jing", "A-201", 5_000, (_e("e201", "adf300l", "modbus", "21", 0),)),
    DemoRoom("202", "杨磊 Yang Lei", "A-202", 5_000, (_e("e202", "adf300l", "modbus", "21", 1),)),
)  # fmt: skip

# Flat loads in watts per electric meter (per circuit for the ADF300L box).
_LOAD_W = {"202500000101": 1200, "202500000102": 800, "202500000103": 2000, "202500000204": 2500, "11": 3000}
_BOX_CIRCUIT_W = (600, 900)


def system_site() -> SiteConfig:
    """The simulated lines behind :data:`ROOMS`, sharing one clock running :data:`TIME_SCALE` × real time."""
    electric: list[dict[str, Any]] = [
        {"model": model, "protocol": proto, "address": address, "base_w": _LOAD_W[address],
         "profile": "flat", "noise": 0.05, "initial_kwh": initial}
        for model, proto, address, initial in (
            ("ddsy1352", "dlt645", "202500000101", "1520.37"),
            ("ddsy1352", "dlt645", "202500000102", "342.10"),
            ("ddsy1352", "dlt645", "202500000103", "88.42"),
            ("dtsy1352", "dlt645", "202500000204", "10233.05"),
            ("dtsy1352", "modbus", "11", "4410.00"),
        )
    ]  # fmt: skip
    electric.append({
        "model": "adf300l", "protocol": "modbus", "address": "21",
        "circuits": [{"base_w": w, "profile": "flat", "noise": 0.05, "initial_kwh": "12.5"}
                     for w in _BOX_CIRCUIT_W],
    })  # fmt: skip
    water = [
        {"model": "water_valve", "address": address, "initial_m3": m3, "base_lph": 30}
        for address, m3 in (("20250000000301", "123.456"), ("20250000000302", "45.678"))
    ]
    site = {
        "name": "demo-system",
        "seed": 11,
        "time_scale": TIME_SCALE,
        "lines": [
            {"name": ELECTRIC_LINE, "baudrate": 9600, "parity": "E", "turnaround_ms": 20, "meters": electric},
            {"name": WATER_LINE, "baudrate": 2400, "parity": "E", "turnaround_ms": 20, "meters": water},
        ],
    }
    return parse_site(site, "demo system site")


def all_meters() -> list[DemoMeter]:
    return [m for room in ROOMS for m in room.meters]


def signing_key() -> str:
    """A fresh per-run command-signing key, shared by the cloud's gateway row and the edge config."""
    return secrets.token_hex(24)


def edge_config(
    data_dir: Path, *, mqtt_port: int, key: str, urls: dict[str, str], prefix: str = "mf/v1"
) -> EdgeConfig:
    """The gateway's config for the demo: every meter polled each :data:`POLL_INTERVAL_S` seconds."""
    lines = []
    for name, baud in ((ELECTRIC_LINE, 9600), (WATER_LINE, 2400)):
        meters = tuple(
            MeterConfig(
                id=m.device_id,
                protocol=m.protocol,  # type: ignore[arg-type]
                address=m.address,
                model=m.model,
                circuit=m.circuit,
                read=(Quantity.FLOW_TOTAL_M3,) if m.kind == "water" else (Quantity.ENERGY_TOTAL_KWH,),
                interval_s=POLL_INTERVAL_S,
            )
            for m in all_meters()
            if m.line == name
        )
        lines.append(
            LineConfig(
                name=name, url=urls[name], baudrate=baud, parity="E",
                turnaround_s=0.15, inter_byte_s=0.1, retries=1, meters=meters,
            )
        )  # fmt: skip
    mqtt = MqttConfig(
        host="127.0.0.1",
        port=mqtt_port,
        prefix=prefix,
        reconnect_min_s=0.1,
        reconnect_max_s=1.0,
        status_interval_s=2.0,
    )
    gateway = GatewaySection(id=GATEWAY_ID, data_dir=data_dir, signing_key=key, log_level="WARNING")
    return EdgeConfig(gateway=gateway, mqtt=mqtt, lines=tuple(lines))


def phone_of(room: str) -> str:
    """The phone number a demo tenant gave the manager: binds their account on the tenant page."""
    return f"138{int(room):08d}"


def yuan(fen: int) -> str:
    """Integer fen as a yuan string (exact: no float on the way)."""
    return f"{Decimal(fen) / 100:.2f}"
