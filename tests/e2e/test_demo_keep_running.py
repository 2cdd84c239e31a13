"""``meterflow demo --keep-running``: the stack stays up with a working API and login until Ctrl-C,
which stops every part and removes the temp dir. The default embedded amqtt broker starts no process;
with ``--broker mosquitto`` the broker is a child process, and none is left behind."""

from __future__ import annotations

import re
import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.demo_process import running_demo

needs_mosquitto = pytest.mark.skipif(
    shutil.which("mosquitto") is None, reason="mosquitto binary not installed"
)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_keep_running_serves_api_until_ctrl_c() -> None:
    with running_demo("--skip-commissioning", "--keep-running", ready="login 登录", within=80) as demo:
        proc, text = demo.proc, demo.text
        assert "OK: the whole system works end to end" in text
        found = re.search(r"API 接口: (http://127\.0\.0\.1:\d+)/docs  login 登录: (\S+) / (\S+)", text)
        assert found, text
        api, user, password = found.groups()
        assert "embedded amqtt broker" in text
        assert _children(proc.pid) == []  # the broker lives in the demo's own process
        assert httpx.get(f"{api}/docs", timeout=5).status_code == 200
        login = httpx.post(
            f"{api}/api/v1/auth/login", json={"username": user, "password": password}, timeout=5
        )
        assert login.status_code == 200, login.text
        token = login.json()["access_token"]
        me = httpx.get(f"{api}/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert me.status_code == 200
        page = re.search(r"tenant page 租户页面: (\S+)  .* bind (A-\d+) with phone (\d+)", text)
        assert page, text
        assert page.group(1) == f"{api}/h5/"
        shell = httpx.get(page.group(1), timeout=5)
        assert shell.status_code == 200
        assert "<title>水电缴费</title>" in shell.text
        # a human's login on that page: the demo's WeChat simulator authorises and the page is logged in
        with httpx.Client(base_url=api, follow_redirects=True, timeout=10) as browser:
            assert browser.get("/h5/login").status_code == 200
            assert "mf_payer" in browser.cookies
            bound = browser.post("/api/v1/tenant/bindings/phone", headers={"X-MF-Tenant-Page": "1"},
                                 json={"account_number": page.group(2), "phone": page.group(3)})  # fmt: skip
            assert bound.status_code == 200, bound.text
            assert bound.json()[0]["meters"][0]["supply"] == "on"  # the room the story brought back
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0  # the story had completed: Ctrl-C is the normal way out
    text = demo.text
    assert "stopped 已停止; removed " in text, text
    removed = re.search(r"removed (\S+)", text)
    assert removed
    assert not Path(removed.group(1)).exists()
    assert "Traceback" not in text
    assert "Warning" not in text  # nothing from amqtt or asyncio at shutdown


@needs_mosquitto
def test_ctrl_c_mid_story_stops_everything_with_mosquitto() -> None:
    with running_demo(
        "--skip-commissioning", "--broker", "mosquitto", ready="readings flowing", within=60
    ) as demo:
        proc = demo.proc
        broker = [c for c in _children(proc.pid) if "mosquitto" in Path(f"/proc/{c}/cmdline").read_text()]
        assert len(broker) == 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
    text = demo.text
    assert "interrupted 已中断" in text, text
    removed = re.search(r"removed (\S+)", text)
    assert removed, text
    assert not Path(removed.group(1)).exists()
    assert (
        not Path(f"/proc/{broker[0]}/cmdline").exists()
        or "mosquitto" not in Path(f"/proc/{broker[0]}/cmdline").read_text()
    )
    assert "Traceback" not in text
