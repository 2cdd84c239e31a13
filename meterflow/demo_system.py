"""``meterflow demo``, stage 2: the whole system on one machine.

Simulated meters (firmware_sim, pty lines, time ×120) → the edge daemon (edge.daemon.Daemon, in this
process) → a private MQTT broker (embedded amqtt by default, MQTT 3.1.1; ``--broker mosquitto`` for a
mosquitto child process, MQTT 5) → the cloud's background workers (ingest, billing, arrears, control
reconciler, jobs; SQLite in a temp dir) with the REST API served by uvicorn in this process. The
script then watches what a property manager would: readings arrive, balances fall, room 103 runs out
of money and is cut at its (simulated) meter, and its tenant pays with WeChat Pay (the WeChat and WeChat
Pay simulators of :mod:`vendor_sim`, :mod:`meterflow.demo_pay`), which brings power back. Tenants and
the manager hear of it by SMS through the Aliyun SMS simulator (:mod:`meterflow.demo_sms`): the final
notice delivered (the simulator's delivery report) before the cut, and the restored notice after.

Everything runs in one asyncio loop so Ctrl-C (or SIGTERM) reaches one place, which stops the daemon,
the API, the workers, the broker and the simulator, and removes the temp dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TextIO
from zoneinfo import ZoneInfo

import msgspec
import uvicorn
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.api import build_app, uvicorn_options
from cloud.db import make_engine, make_session_factory
from cloud.events import LocalEventBus
from cloud.migrations import upgrade
from cloud.models import NotificationOutbox
from cloud.runtime import RuntimeOptions, run_background
from cloud.services.notify.templates import render
from cloud.settings import Settings, load_settings
from edge.daemon import Daemon
from firmware_sim.meters.electric import ElectricMeter
from firmware_sim.serve import SiteHandle, run_site
from meterflow.demo_broker import (
    BrokerKind,
    DemoBroker,
    DemoError,
    broker_note,
    check_port_free,
    start_broker,
)
from meterflow.demo_cloud import ADMIN_USER, MANAGER_USER, CloudSnapshot, SeededCloud, seed_cloud, snapshot
from meterflow.demo_pay import DemoPay, start_pay
from meterflow.demo_site import (
    ARREARS_ROOM,
    ELECTRIC_PRICE_YUAN,
    GATEWAY_ID,
    ROOMS,
    SILENT_GATEWAY_ID,
    TIME_SCALE,
    all_meters,
    edge_config,
    phone_of,
    signing_key,
    system_site,
    yuan,
)
from meterflow.demo_sms import DEMO_SIGN, MANAGER_PHONE, DemoSms, SmsSeen, start_sms

__all__ = ["SystemOptions", "SystemResult", "run_system"]

RECHARGE_FEN = 5_000
_SHANGHAI = ZoneInfo("Asia/Shanghai")
_PHASE_LIMIT_S = {"readings": 25.0, "trip": 45.0, "restore": 20.0}
_PROTOCOL: dict[BrokerKind, Literal["5", "3.1.1"]] = {"amqtt": "3.1.1", "mosquitto": "5"}
_MQTT_USER = "demo-cloud"


@dataclass(frozen=True)
class SystemOptions:
    keep_running: bool = False
    api_port: int = 0  # 0: any free port
    mqtt_port: int = 0
    broker: BrokerKind = "amqtt"
    workdir: Path | None = None  # default: a temp dir, removed at the end


@dataclass
class SystemResult:
    """What stage 2 observed (the e2e test asserts on it)."""

    readings: int = 0
    charges: int = 0
    held: int = 0  # readings held for an operator (none, for meters that behave)
    opening_fen: dict[str, int] = field(default_factory=dict)
    balances_fen: dict[str, int] = field(default_factory=dict)
    trip_at_meter: bool = False  # the simulated meter's relay opened
    trip_acked: bool = False  # the gateway acked the trip with read-back "open"
    trip_s: float | None = None  # cloud issued the trip command → relay open at the meter
    restore_at_meter: bool = False
    restore_acked: bool = False
    restore_s: float | None = None  # tenant's payment at the simulator → relay closed at the meter
    wechat_paid: bool = False  # the tenant's order is paid, as the tenant API shows it
    notices: list[tuple[str, str, datetime | None]] = field(default_factory=list)
    """(kind, status, delivered_at) of the arrears room's notices, oldest first."""
    final_notice_before_cut: bool = False  # delivered before the trip command was issued
    restored_notice: bool = False
    sms: list[SmsSeen] = field(default_factory=list)
    """Every message the Aliyun SMS simulator accepted, oldest first."""
    sms_final_before_cut: bool = False  # the simulator had the final notice before the trip was issued
    sms_restored_after_close: bool = False  # and the restored notice after the close was issued
    sms_manager_notice: bool = False  # the manager's phone got the silent gateway's offline notice
    trip_issued_at: datetime | None = None  # when the cloud issued the trip / close command
    close_issued_at: datetime | None = None
    api_url: str = ""
    interrupted: bool = False  # Ctrl-C / SIGTERM before the story was told
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            not self.problems
            and self.readings > 0
            and self.charges > 0
            and self.trip_at_meter
            and self.trip_acked
            and self.restore_at_meter
            and self.restore_acked
            and self.wechat_paid
            and self.final_notice_before_cut
            and self.restored_notice
            and self.sms_final_before_cut
            and self.sms_restored_after_close
            and self.sms_manager_notice
        )


class _Say:
    """Timestamped lines: wall clock (local) and seconds since the stage started."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.t0 = time.monotonic()

    def __call__(self, text: str = "") -> None:
        stamp = f"{datetime.now().astimezone():%H:%M:%S} +{time.monotonic() - self.t0:5.1f}s"
        print(f"[{stamp}] {text}" if text else "", file=self.out, flush=True)

    def section(self, title: str) -> None:
        print(f"\n== {title} " + "=" * max(0, 70 - len(title)), file=self.out, flush=True)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the demo owns Ctrl-C and stops the server itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class _Stack:
    workdir: Path
    own_workdir: bool
    site: SiteHandle | None = None
    broker: DemoBroker | None = None
    broker_kind: BrokerKind = "amqtt"
    engine: Engine | None = None
    settings: Settings | None = None
    seeded: SeededCloud | None = None
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    stops: dict[str, asyncio.Event] = field(default_factory=dict)
    server: _Server | None = None
    edge_key: str = ""
    api_url: str = ""
    api_port: int = 0
    pay: DemoPay | None = None
    sms: DemoSms | None = None


def _free_port() -> int:
    from edge.devbroker import free_port

    return free_port()


def _start_sync(stack: _Stack, options: SystemOptions, say: _Say) -> None:
    """Simulator, broker, database: the parts that start synchronously."""
    say.section("stage 2: whole system 整体系统 — simulators + gateway + MQTT + cloud")
    stack.site = run_site(system_site())
    say(f"simulated site 模拟现场: {len(all_meters())} meters on 2 lines, time ×{TIME_SCALE:g} "
        f"(1 s = {TIME_SCALE / 60:g} simulated min), flat loads")  # fmt: skip
    for line in stack.site.lines:
        say(f"  line {line.line.name}: {line.url}")
    stack.broker = start_broker(stack.workdir / "broker", options.mqtt_port, options.broker)
    stack.broker_kind = options.broker
    say(f"MQTT broker 消息代理: 127.0.0.1:{stack.broker.port} — {broker_note(options.broker)}")
    url = f"sqlite:///{stack.workdir / 'cloud' / 'meterflow.db'}"
    (stack.workdir / "cloud").mkdir(parents=True, exist_ok=True)
    upgrade(url)
    stack.engine = make_engine(url)
    key = signing_key()
    password = f"demo-{secrets.token_hex(4)}"
    stack.api_port = options.api_port or _free_port()
    stack.pay = start_pay()
    site = stack.pay.site
    say(f"WeChat simulators 微信模拟器: WeChat Pay API v3 {site.pay_served.base_url}, "
        f"WeChat login {site.wechat_served.base_url} (keys generated now)")  # fmt: skip
    stack.sms = start_sms()
    say(f"SMS simulator 短信模拟器: Aliyun dysmsapi {stack.sms.served.base_url} (signature 签名 "
        f"【{DEMO_SIGN}】, dummy keys 假密钥; delivers and reports every message)")  # fmt: skip
    stack.seeded = seed_cloud(make_session_factory(stack.engine), key=key, admin_password=password)
    stack.settings = load_settings(
        database_url=url,
        data_dir=stack.workdir / "cloud",
        redis_url=None,
        mqtt_host="127.0.0.1",
        mqtt_port=stack.broker.port,
        mqtt_username=_MQTT_USER,  # amqtt keeps sessions only of clients that send a user name
        mqtt_password=None,
        mqtt_protocol=_PROTOCOL[options.broker],
        mqtt_tls=False,
        mqtt_prefix="mf/v1",
        mqtt_shared=False,  # one ingest replica: no $share needed
        mqtt_client_id=f"demo-cloud-{uuid.uuid4().hex[:6]}",
        secret_key=secrets.token_hex(24),
        environment="development",
        **stack.pay.settings(f"http://127.0.0.1:{stack.api_port}"),
        **stack.sms.settings(),
    )
    say(f"cloud database 云端数据库: {url}")
    say(f"  migrated, seeded 已初始化: 1 organisation, 1 project, "
        f"{len(ROOMS)} rooms/tenants/accounts, {len(all_meters())} meters, gateway {GATEWAY_ID}")  # fmt: skip
    say(f"  notices 通知: SMS 短信 (Aliyun simulator) then log 日志 to tenants' phones and to the manager "
        f"{MANAGER_USER} ({MANAGER_PHONE}); building 2's gateway {SILENT_GATEWAY_ID} is unplugged "
        "(silent 20 min) — the manager is told")  # fmt: skip
    say(
        f"tariff 电价: {ELECTRIC_PRICE_YUAN} 元/kWh flat; arrears policy 欠费策略: cut at 0.00 元, "
        "friendly hours 友好时段 DISABLED (no 18:00-09:00 / weekend / holiday block) so the cut happens now, "
        "once the final notice 停电通知 is delivered (SMS delivery report 短信回执)"
    )
    stack.edge_key = key


async def _start_async(stack: _Stack, options: SystemOptions, say: _Say) -> None:
    assert stack.settings is not None
    assert stack.engine is not None
    assert stack.site is not None
    bus = LocalEventBus()
    stack.stops["cloud"] = asyncio.Event()
    stack.tasks["cloud"] = asyncio.create_task(
        run_background(
            stack.settings,
            stack.stops["cloud"],
            event_bus=bus,
            engine=stack.engine,
            options=RuntimeOptions(tick_s=0.5, client_id=stack.settings.mqtt_client_id),
        ),
        name="demo-cloud",
    )
    say("cloud workers 云端后台: ingest 接收, billing 计费, arrears 欠费, control reconciler 控制, jobs 任务")
    port = stack.api_port
    if options.api_port:
        check_port_free(options.api_port, "API")
    app = build_app(stack.settings, engine=stack.engine, event_bus=bus, background=False)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                            lifespan="on", **uvicorn_options())  # fmt: skip
    stack.server = _Server(config)
    stack.tasks["api"] = asyncio.create_task(stack.server.serve(), name="demo-api")
    deadline = time.monotonic() + 15
    while not stack.server.started:
        if stack.tasks["api"].done() or time.monotonic() > deadline:
            raise DemoError(f"the cloud API did not start on 127.0.0.1:{port} (port busy?)")
        await asyncio.sleep(0.05)
    stack.api_url = f"http://127.0.0.1:{port}"
    say(f"cloud REST API 接口: {stack.api_url} (OpenAPI docs at {stack.api_url}/docs)")
    urls = {line.line.name or "": line.url for line in stack.site.lines}
    assert stack.broker is not None
    config_edge = edge_config(
        stack.workdir / "edge", mqtt_port=stack.broker.port, key=stack.edge_key, urls=urls
    )
    mqtt = msgspec.structs.replace(
        config_edge.mqtt, protocol=_PROTOCOL[stack.broker_kind], username=GATEWAY_ID
    )
    config_edge = msgspec.structs.replace(config_edge, mqtt=mqtt)
    stack.stops["edge"] = asyncio.Event()
    stack.tasks["edge"] = asyncio.create_task(Daemon(config_edge).run(stack.stops["edge"]), name="demo-edge")
    say(f"edge daemon 网关: {GATEWAY_ID} polling {len(all_meters())} meters every 1 s over RS-485 (pty)")


async def _stop_async(stack: _Stack) -> None:
    """Daemon first (it flushes its outbox), then the API, then the cloud workers."""
    if "edge" in stack.tasks:
        stack.stops["edge"].set()
    if stack.server is not None:
        stack.server.should_exit = True
    if "cloud" in stack.tasks:
        stack.stops["cloud"].set()
    for name, task in stack.tasks.items():
        try:
            await asyncio.wait_for(task, 20)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
        except Exception as exc:  # report and keep stopping the rest
            print(f"  ({name} stopped with {type(exc).__name__}: {exc})")


def _stop_sync(stack: _Stack) -> None:
    if stack.engine is not None:
        stack.engine.dispose()
    if stack.pay is not None:
        stack.pay.stop()
    if stack.sms is not None:
        stack.sms.stop()
    if stack.broker is not None:
        stack.broker.stop()
    if stack.site is not None:
        stack.site.stop()
    if stack.own_workdir:
        shutil.rmtree(stack.workdir, ignore_errors=True)


class _RelayWatch:
    """Polls one simulated meter's relay every 10 ms from a thread and time-stamps each change (UTC),
    so the demo can say when the cut really happened at the meter, not when it next looked."""

    def __init__(self, meter: ElectricMeter) -> None:
        self.meter = meter
        self.changes: list[tuple[datetime, bool]] = []  # (at, relay_open)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-relay-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = self.meter.relay_open
        while not self._stop.wait(0.01):
            now = self.meter.relay_open
            if now != last:
                self.changes.append((datetime.now(UTC), now))
                last = now

    def first(self, relay_open: bool) -> datetime | None:
        return next((at for at, state in self.changes if state == relay_open), None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _room_of(device: str) -> str:
    return next(room.room for room in ROOMS for m in room.meters if m.device_id == device)


def _balance_line(snap: CloudSnapshot) -> str:
    return "  ".join(f"{room.account} {yuan(snap.balances_fen.get(room.account, 0))}" for room in ROOMS)


async def _until(check: Callable[[], bool], limit_s: float, every: Callable[[], None] | None = None,
                 every_s: float = 3.0) -> bool:  # fmt: skip
    deadline = time.monotonic() + limit_s
    next_report = time.monotonic() + every_s
    while True:
        if await asyncio.to_thread(check):
            return True
        if time.monotonic() > deadline:
            return False
        if every is not None and time.monotonic() >= next_report:
            await asyncio.to_thread(every)
            next_report = time.monotonic() + every_s
        await asyncio.sleep(0.2)


async def _story(stack: _Stack, result: SystemResult, say: _Say) -> None:
    assert stack.seeded is not None
    assert stack.engine is not None
    assert stack.site is not None
    seeded = stack.seeded
    factory = make_session_factory(stack.engine)
    snap = await asyncio.to_thread(snapshot, factory, seeded)
    result.opening_fen = dict(snap.balances_fen)

    say.section("readings flowing 读数上传 — meter → gateway → MQTT → cloud → ledger")

    def show_flow() -> None:
        now = snapshot(factory, seeded)
        say(f"readings 读数 {now.readings:4d}  billed charges 计费 {now.charges:4d}  held 挂起 "
            f"{now.readings_held}  balances 余额 (元): {_balance_line(now)}")  # fmt: skip

    def flowing() -> bool:
        now = snapshot(factory, seeded)
        return now.charges >= 2 * len(ROOMS) and len(now.energy_kwh) == len(all_meters())

    if not await _until(flowing, _PHASE_LIMIT_S["readings"], show_flow):
        result.problems.append("readings did not reach the cloud's ledger in time")
        show_flow()
        return
    show_flow()
    snap = await asyncio.to_thread(snapshot, factory, seeded)
    say("per meter 每块表 (last billed register, from the cloud):")
    for m in all_meters():
        unit = "m³" if m.kind == "water" else "kWh"
        account = seeded.account_of_meter[m.device_id]
        say(f"  {m.device_id:<5} room {_room_of(m.device_id)} {m.model:<11} {m.protocol:<7} "
            f"{snap.energy_kwh.get(m.device_id, '?'):>10} {unit:<4} account {account} "
            f"balance {yuan(snap.balances_fen[account]):>7} 元 "
            f"(opened with {yuan(result.opening_fen[account])})")  # fmt: skip

    room = next(r for r in ROOMS if r.room == ARREARS_ROOM)
    device = room.meters[0].device_id
    sim_meter = stack.site.line(room.meters[0].line).meter(room.meters[0].address)
    assert isinstance(sim_meter, ElectricMeter)
    say.section(f"arrears 欠费 — room {room.room} ({room.tenant}), account {room.account}")
    say(f"opened with {yuan(room.opening_fen)} 元 on a 3 kW load at {ELECTRIC_PRICE_YUAN} 元/kWh, "
        f"time ×{TIME_SCALE:g}: about 15 s of supply")  # fmt: skip

    def show_arrears() -> None:
        now = snapshot(factory, seeded)
        relay = "OPEN 断开" if sim_meter.relay_open else "closed 合闸"
        say(f"  balance 余额 {yuan(now.balances_fen[room.account]):>6} 元, meter {sim_meter.energy_kwh} kWh, "
            f"relay at the meter 表计继电器: {relay}, "
            f"cloud wants {now.desired.get(device) or '-'}")  # fmt: skip

    watch = _RelayWatch(sim_meter)
    try:
        await _cut_and_restore(stack, result, say, watch, show_arrears)
    finally:
        watch.stop()


_Notice = tuple[str, str, datetime | None, str, str]


def _notices(factory: sessionmaker[Session], account_id: int) -> list[_Notice]:
    """The account's notices: kind, status, when delivered, the text the sender rendered, and the
    channel that carried it."""
    with factory() as s:
        rows = s.scalars(
            select(NotificationOutbox)
            .where(col(NotificationOutbox.account_id) == account_id)
            .order_by(col(NotificationOutbox.id))
        ).all()
        return [
            (
                r.kind,
                r.status,
                r.delivered_at,
                render(r.kind, r.payload, r.created_at, _SHANGHAI, "zh").text,
                r.channel if r.sent_at else "-",
            )
            for r in rows
        ]


def _say_notices(say: _Say, notices: list[_Notice], kinds: set[str]) -> None:
    for kind, status, delivered, text, channel in notices:
        if kind.split("_")[0] in kinds or kind in kinds:
            at = delivered.astimezone(UTC).strftime("%H:%M:%S") if delivered else "-"
            say(f"  NOTICE 通知 {kind:<15} {status:<9} {at} {channel:<10} {text}")


def _sms_to(stack: _Stack, phone: str, kind: str) -> SmsSeen | None:
    """The first message of ``kind`` the SMS simulator accepted for ``phone``."""
    assert stack.sms is not None
    return next((m for m in stack.sms.seen() if m.phone == phone and m.kind == kind), None)


def _clock(at: datetime | None) -> str:
    return at.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3] if at else "-"


def _ms(later: datetime | None, earlier: datetime | None) -> str:
    if later is None or earlier is None:
        return "?"
    return f"{(later - earlier).total_seconds() * 1000:.0f} ms"


async def _cut_and_restore(
    stack: _Stack, result: SystemResult, say: _Say, watch: _RelayWatch, show: Callable[[], None]
) -> None:
    """Balance → 0 → trip at the meter → ack; REST recharge → close at the meter → ack."""
    assert stack.seeded is not None
    assert stack.engine is not None
    seeded, factory = stack.seeded, make_session_factory(stack.engine)
    room = next(r for r in ROOMS if r.room == ARREARS_ROOM)
    device, sim_meter = room.meters[0].device_id, watch.meter

    def overdrawn() -> bool:
        return snapshot(factory, seeded).balances_fen[room.account] <= 0

    def acked(action: str) -> Callable[[], bool]:
        def check() -> bool:
            now = snapshot(factory, seeded)
            observed = "open" if action == "trip" else "closed"
            return (device, action, "acked_done") in now.commands and now.observed.get(device) == observed

        return check

    if not await _until(overdrawn, _PHASE_LIMIT_S["trip"], show):
        result.problems.append(f"account {room.account} did not run out of money in time")
        return
    show()
    say(f"account {room.account} is in arrears 已欠费 → policy wants supply off → signed trip command")
    if not await _until(lambda: watch.first(True) is not None, _PHASE_LIMIT_S["trip"]):
        result.problems.append(f"meter {device} was not tripped at the simulated meter")
        return
    result.trip_at_meter = True
    result.trip_acked = await _until(acked("trip"), _PHASE_LIMIT_S["restore"])
    snap = await asyncio.to_thread(snapshot, factory, seeded)
    issued, opened = snap.issued.get((device, "trip")), watch.first(True)
    if issued is not None and opened is not None:
        result.trip_s = (opened - issued).total_seconds()
    say(f"TRIPPED 已断电: relay open at the simulated meter {sim_meter.address}, "
        f"{_ms(opened, issued)} after the cloud issued the signed trip command")  # fmt: skip
    if not result.trip_acked:
        result.problems.append("the gateway's trip ack did not reach the cloud")
        return
    say("gateway ack 网关回执: trip done, read-back says relay open; cloud observed = open")
    account_id = seeded.accounts[room.account]
    notices = await asyncio.to_thread(_notices, factory, account_id)
    final = next((n for n in notices if n[0] == "final_notice"), None)
    result.final_notice_before_cut = bool(final and final[2] and issued and final[2] <= issued)
    say("notices before the cut 停电前通知 (delivered 送达 before the trip command was issued):")
    _say_notices(say, notices, {"low", "final_notice"})
    if not result.final_notice_before_cut:
        result.problems.append("the final notice was not delivered before the cut")
    result.trip_issued_at = issued
    final_sms = _sms_to(stack, phone_of(room.room), "final_notice")
    result.sms_final_before_cut = bool(final_sms and issued and final_sms.accepted_at < issued)
    say(f"SMS simulator 短信模拟器: final notice 停电通知 to {phone_of(room.room)} accepted at "
        f"{_clock(final_sms.accepted_at if final_sms else None)} UTC, delivery reported; "
        f"trip command issued at {_clock(issued)} UTC")  # fmt: skip
    if not result.sms_final_before_cut:
        result.problems.append("the SMS simulator did not have the final notice before the trip command")
    energy_at_trip = sim_meter.energy_kwh
    await asyncio.sleep(2)
    say(f"supply off 停止用电: meter register {energy_at_trip} → {sim_meter.energy_kwh} kWh in 2 s")

    say.section(f"recharge 充值 — {room.tenant} pays {yuan(RECHARGE_FEN)} 元 with WeChat Pay 微信支付")
    assert stack.pay is not None
    payment = await asyncio.to_thread(
        stack.pay.tenant_pays, stack.api_url, room.account, phone_of(room.room), RECHARGE_FEN
    )
    recharged_at = payment.paid_at
    say(f"tenant 租户: WeChat login 微信登录 (official account, simulated) → bound {room.account} "
        f"by phone → order {payment.out_trade_no} (tenant API) → paid at the WeChat Pay simulator")
    say("WeChat Pay notifies the cloud 支付通知 (signed, AES-GCM) → credited once 入账 → restore 复电")
    if not await _until(lambda: watch.first(False) is not None, _PHASE_LIMIT_S["restore"]):
        result.problems.append(f"meter {device} was not closed after the recharge")
        return
    result.restore_at_meter = True
    closed = watch.first(False)
    assert closed is not None
    result.restore_s = (closed - recharged_at).total_seconds()
    say(f"RESTORED 已复电: relay closed at the simulated meter {_ms(closed, recharged_at)} after the "
        "tenant paid (notification → credit → event-driven restore, no polling sweep)")  # fmt: skip
    state = await asyncio.to_thread(stack.pay.order_state, stack.api_url, payment)
    result.wechat_paid = state == "paid"
    say(f"order 订单 {payment.out_trade_no}: {state} (what the tenant's page shows)")
    if not result.wechat_paid:
        result.problems.append(f"the tenant's order is {state}, not paid")
    result.restore_acked = await _until(acked("close"), _PHASE_LIMIT_S["restore"])
    if not result.restore_acked:
        result.problems.append("the gateway's close ack did not reach the cloud")
        return
    say("gateway ack 网关回执: close done, read-back says relay closed; cloud observed = closed")
    show()

    def restored_sent() -> bool:
        return any(n[0] == "restored" and n[1] == "delivered" for n in _notices(factory, account_id))

    result.restored_notice = await _until(restored_sent, _PHASE_LIMIT_S["restore"])
    notices = await asyncio.to_thread(_notices, factory, account_id)
    result.notices = [(k, st, at) for k, st, at, _, _ in notices]
    _say_notices(say, notices, {"cut", "restored"})
    if not result.restored_notice:
        result.problems.append("the restored notice was not delivered")
    snap = await asyncio.to_thread(snapshot, factory, seeded)
    close_issued = result.close_issued_at = snap.issued.get((device, "close"))
    restored_sms = _sms_to(stack, phone_of(room.room), "restored")
    result.sms_restored_after_close = bool(
        restored_sms and close_issued and restored_sms.accepted_at > close_issued
    )
    say(f"SMS simulator 短信模拟器: restored notice 已恢复供电 to {phone_of(room.room)} accepted at "
        f"{_clock(restored_sms.accepted_at if restored_sms else None)} UTC; close command issued at "
        f"{_clock(close_issued)} UTC")  # fmt: skip
    if not result.sms_restored_after_close:
        result.problems.append("the SMS simulator did not get the restored notice after the close command")


def _final(stack: _Stack, result: SystemResult, say: _Say) -> None:
    """The cloud's view at the end, whatever happened before (also after a failed step)."""
    if stack.seeded is None or stack.engine is None:
        return
    snap = snapshot(make_session_factory(stack.engine), stack.seeded)
    result.readings, result.charges, result.held = snap.readings, snap.charges, snap.readings_held
    result.balances_fen = dict(snap.balances_fen)
    say.section("commands 指令 (cloud → gateway)")
    for dev, action, status in snap.commands:
        say(f"  {dev:<5} {action:<8} {status}")


def _sms_summary(stack: _Stack, result: SystemResult, say: _Say) -> None:
    """Every SMS the simulator accepted: to whom, which notice, with which values."""
    if stack.sms is None:
        return
    result.sms = stack.sms.seen()
    manager = [m for m in result.sms if m.phone == MANAGER_PHONE]
    result.sms_manager_notice = any(m.kind == "gateway_offline" for m in manager)
    say.section("SMS 短信 (what the Aliyun SMS simulator received, every one delivery-reported)")
    for m in result.sms:
        who = f"manager {MANAGER_USER}" if m.phone == MANAGER_PHONE else "tenant"
        values = ", ".join(f"{k}={v}" for k, v in m.params.items())
        say(f"  SMS {_clock(m.accepted_at)} → {m.phone} ({who}) {m.kind:<15} {values}")
    for refused in stack.sms.refused():
        say(f"  SMS refused 拒绝: {refused}")
    if not result.sms_manager_notice:
        result.problems.append(f"the manager's phone got no SMS of {SILENT_GATEWAY_ID} going offline")


def _summary(result: SystemResult, say: _Say) -> None:
    say.section("summary 总结")
    say(f"readings stored 读数 {result.readings}, billed charges 计费交易 {result.charges}")
    for room in ROOMS:
        before, after = result.opening_fen.get(room.account, 0), result.balances_fen.get(room.account, 0)
        extra = f" (+{yuan(RECHARGE_FEN)} WeChat Pay 微信支付)" if room.room == ARREARS_ROOM else ""
        say(f"  {room.account} room {room.room}: {yuan(before):>7} → {yuan(after):>7} 元{extra}")
    if result.trip_s is not None:
        say(f"trip 断电 at the meter {result.trip_s * 1000:.0f} ms after the cloud's command; "
            f"restore 复电 {(result.restore_s or 0) * 1000:.0f} ms after the recharge")  # fmt: skip
    for problem in result.problems:
        say(f"PROBLEM 问题: {problem}")
    say("OK: the whole system works end to end 全流程正常" if result.ok else "FAILED 失败")


async def _run(stack: _Stack, options: SystemOptions, say: _Say, result: SystemResult) -> None:
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, interrupted.set)
    try:
        await _start_async(stack, options, say)
        result.api_url = stack.api_url
        story = asyncio.create_task(_story(stack, result, say), name="demo-story")
        stopper = asyncio.create_task(interrupted.wait())
        await asyncio.wait({story, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if story.done():
            failure = story.exception()
            if failure is not None:  # say what broke, then stop everything as usual
                result.problems.append(f"{type(failure).__name__}: {failure}")
            _final(stack, result, say)
            _sms_summary(stack, result, say)
            _summary(result, say)
        else:
            story.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await story
            result.interrupted = True
            result.problems.append("interrupted 已中断")
            say("interrupted 已中断 (Ctrl-C)")
        if options.keep_running and not interrupted.is_set():
            say.section("keep running 持续运行")
            room = next(r for r in ROOMS if r.room == ARREARS_ROOM)
            say(f"tenant page 租户页面: {result.api_url}/h5/  (WeChat login simulated; bind "
                f"{room.account} with phone {phone_of(room.room)}, pay at the WeChat Pay simulator)")
            say(f"API 接口: {result.api_url}/docs  login 登录: {ADMIN_USER} / "
                f"{stack.seeded.admin_password if stack.seeded else '?'} (demo only 仅供演示)")  # fmt: skip
            _console_logins(stack, result, say)
            say(
                "the gateway keeps polling and the cloud keeps billing; "
                "Ctrl-C stops everything 按 Ctrl-C 退出"
            )
            await stopper
        stopper.cancel()
    finally:
        say("stopping 正在停止: gateway, API, cloud workers, broker, simulator …")
        await _stop_async(stack)
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)


CONSOLE_ROLES = (("manager", "经理"), ("finance", "财务"), ("installer", "安装"))
"""The demo's console logins besides the admin: one per staff role of docs/roles.md (tenants use the
H5 page, not the console)."""


def _console_logins(stack: _Stack, result: SystemResult, say: _Say) -> None:
    """Create one demo user per staff role (the admin's demo password) and print the console's address
    and every login, so each role's view of the console can be tried."""
    seeded = stack.seeded
    if seeded is None or stack.engine is None:
        return
    from cloud.services import users

    with make_session_factory(stack.engine)() as s:
        for role, _ in CONSOLE_ROLES:
            if role == "manager":
                continue  # seeded with the site (cloud/services/notify: the manager's phone gets notices)
            users.create_user(
                s, username=f"demo-{role}", password=seeded.admin_password, role=role, org_id=seeded.org_id
            )
        s.commit()
    say(f"console 控制台: {result.api_url}/console/  (password 密码 {seeded.admin_password} for every login)")
    say(f"  admin 管理员: {ADMIN_USER}")
    for role, zh in CONSOLE_ROLES:
        say(f"  {role} {zh}: demo-{role}")


def run_system(out: TextIO, options: SystemOptions | None = None) -> SystemResult:
    """Start the whole stack, tell its story, stop it; raises :class:`DemoError` if it cannot start."""
    options = options or SystemOptions()
    say = _Say(out)
    own = options.workdir is None
    if options.workdir is not None and options.workdir.exists() and any(options.workdir.iterdir()):
        # the demo seeds a fresh database and gateway; a previous run's data would clash with it
        raise DemoError(f"--data-dir {options.workdir} is not empty; give a new or empty directory")
    workdir = Path(tempfile.mkdtemp(prefix="meterflow-demo-")) if own else options.workdir
    assert workdir is not None
    stack = _Stack(workdir=workdir, own_workdir=own)
    result = SystemResult()
    try:
        _start_sync(stack, options, say)
        asyncio.run(_run(stack, options, say, result))
    finally:
        _stop_sync(stack)
        say("stopped 已停止" + (f"; removed {workdir}" if own else f"; data kept in {workdir}"))
    return result
