"""``meterflow demo`` end to end, real components only.

Stage 1: simulated site up, both lines scanned, every meter read, one meter tripped and restored and
one valve closed and opened, each verified by read-back. Stage 2: simulators → edge daemon → the
embedded amqtt broker (MQTT 3.1.1) → cloud (SQLite): readings billed, balances fall, room 103 tripped at its simulated meter
when its balance runs out, its tenant pays 50 元 with WeChat Pay (the simulators) and it closes again.
The notices go by SMS through the Aliyun SMS simulator: the final notice reaches it before the trip
command, the restored notice after the close command, and the manager hears of the unplugged gateway.
"""

from __future__ import annotations

import io
import socket
from pathlib import Path

import pytest

from meterflow.cli import main
from meterflow.demo import demo_site, run_full
from meterflow.demo_site import ARREARS_ROOM, ROOMS, phone_of
from meterflow.demo_sms import MANAGER_PHONE


def test_full_demo_commissions_bills_trips_and_restores() -> None:
    out = io.StringIO()
    full = run_full(out)
    text = out.getvalue()
    assert full.ok, text

    # stage 1: commissioning
    stage1 = full.commissioning
    assert stage1 is not None
    site = demo_site()
    expected = {
        protocol: sorted(
            m.address for line in site.lines for m in line.meters if m.effective_protocol == protocol
        )
        for protocol in ("dlt645", "modbus", "cjt188")
    }
    assert {p: sorted(f.address for f in found) for p, found in stage1.found.items()} == expected
    models = {f.address: f.model for found in stage1.found.values() for f in found}
    assert models["11"] == "dtsy1352"
    assert models["21"] == models["22"] == "adf300l"
    assert models["202500000204"] == "dtsy1352"
    # 5 DL/T 645 meters + 1 DTSY1352 + 4 + 2 ADF300L circuits + 4 water meters
    assert stage1.readings == 16
    assert stage1.verified == [
        "trip 202500000101",
        "close 202500000101",
        "valve_close 20250000000301",
        "valve_open 20250000000301",
    ]
    assert "12 meters found, 16 readings, 4 commands verified" in text

    # stage 2: the whole system
    system = full.system
    assert system.readings > 0
    assert system.charges > 0
    assert system.held == 0  # no demo meter delivers more than its rated rate (× the demo's speed)
    arrears = next(r.account for r in ROOMS if r.room == ARREARS_ROOM)
    for room in ROOMS:
        if room.room != ARREARS_ROOM:
            # every tenant consumed: each balance fell, by whole fen, and none went below zero
            assert 0 < system.balances_fen[room.account] < system.opening_fen[room.account], room
    assert system.opening_fen[arrears] == 150
    assert system.trip_at_meter  # the simulated meter's relay opened
    assert system.trip_acked  # and the gateway's ack (read-back "open") reached the cloud
    assert system.restore_at_meter
    assert system.restore_acked
    assert system.wechat_paid  # the tenant's order, paid as the tenant API shows it
    # times measured at the simulated meter: after the cloud's command / after the recharge request
    assert system.trip_s is not None
    assert system.trip_s > 0
    assert system.restore_s is not None
    assert system.restore_s > 0
    # paid 50.00 yuan (5000 fen) after running slightly below zero from 150 fen: positive, less than both
    assert 0 < system.balances_fen[arrears] < 5_000 + 150
    assert "李娜 Li Na pays 50.00 元 with WeChat Pay" in text
    assert "(+50.00 WeChat Pay 微信支付)" in text
    assert "TRIPPED 已断电" in text
    # the final notice was delivered before the trip command was issued, the restored notice after
    assert system.final_notice_before_cut
    assert system.restored_notice
    kinds = [kind for kind, status, _at in system.notices if status == "delivered"]
    assert kinds.index("final_notice") < kinds.index("cut") < kinds.index("restored")
    assert any(kind.startswith("low_balance") for kind in kinds)
    assert "NOTICE 通知 final_notice" in text
    assert "NOTICE 通知 restored" in text
    # ... and they went through the Aliyun SMS simulator (the official SDK, signed requests, its
    # delivery reports): the final notice was there before the trip command was issued, the
    # restored notice came after the close command, the manager heard of the unplugged gateway
    tenant = [m for m in system.sms if m.phone == phone_of(ARREARS_ROOM)]
    kinds_sent = [m.kind for m in tenant]
    assert kinds_sent.index("final_notice") < kinds_sent.index("cut") < kinds_sent.index("restored")
    final_sms = next(m for m in tenant if m.kind == "final_notice")
    restored_sms = next(m for m in tenant if m.kind == "restored")
    assert system.trip_issued_at is not None
    assert system.close_issued_at is not None
    assert final_sms.accepted_at < system.trip_issued_at
    assert restored_sms.accepted_at > system.close_issued_at
    assert final_sms.params["account"] == arrears
    assert system.sms_final_before_cut
    assert system.sms_restored_after_close
    assert [(m.kind, m.params["gateway"]) for m in system.sms if m.phone == MANAGER_PHONE] == [
        ("gateway_offline", "gw-demo-02")
    ]
    assert "NOTICE 通知 final_notice    delivered" in text
    assert "sms_aliyun" in text.split("NOTICE 通知 final_notice", 1)[1].split("\n", 1)[0]
    assert "→ 13900000100 (manager demo-manager) gateway_offline" in text
    assert "RESTORED 已复电" in text
    assert "e103  trip     acked_done" in text
    assert "e103  close    acked_done" in text
    assert "friendly hours 友好时段 DISABLED" in text
    assert "OK: the whole system works end to end" in text
    assert "embedded amqtt broker 内置代理" in text
    assert "amqtt" not in text.split("MQTT broker 消息代理", 1)[1].split("\n", 1)[1]  # its logs stay quiet


def test_demo_is_a_meterflow_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "simulated meters on two RS-485 lines" in text
    assert "--keep-running" in text
    assert "--broker {amqtt,mosquitto}" in text


def test_busy_mqtt_port_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["demo", "--skip-commissioning", "--mqtt-port", str(port), "--data-dir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"MQTT port {port} on 127.0.0.1 is busy" in err


def test_data_dir_must_be_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "cloud").mkdir()
    assert main(["demo", "--skip-commissioning", "--data-dir", str(tmp_path)]) == 2
    assert "is not empty" in capsys.readouterr().err
