"""The console's gateway pages over plain HTTP (Starlette's TestClient, each engine of
tests/cloud/conftest.py): a gateway's page with its commissioning report, meters into rooms, key
rotation and the end of the overlap, provisioning codes shown once and used by the real register
route, and the dead letters paged. Who may do what is the role table's answer for the API route
each button stands for; CSRF is refused; another organisation's gateway is missing."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine, select
from sqlmodel import col

from cloud.models import AuditLog, DeadLetter, GatewayKey, GatewayStatusRow, Meter, ProvisioningCode
from cloud.services.audit import AuditAction
from tests.browser.consolekit import Console, serve_console
from tests.cloud.flowkit import T0, make_flow_site


@pytest.fixture
def c(engine: Engine, db_url: str) -> Iterator[Console]:
    """The console on a migrated database with the console site (tests/browser/consolekit.py): a
    gateway with three meters in rooms 301-303 of A栋 and a user per role."""
    with serve_console(engine, db_url) as console:
        yield console


def _gw(c: Console) -> str:
    return f"/console/gateways/{c.site.flow.gateway_id}"


def _keys(c: Console) -> dict[str, GatewayKey]:
    with c.factory() as s:
        rows = s.scalars(select(GatewayKey).where(col(GatewayKey.gateway_id) == c.site.flow.gateway_id))
        return {k.kid: k for k in rows}


def _audits(c: Console, action: str) -> list[AuditLog]:
    with c.factory() as s:
        return list(s.scalars(select(AuditLog).where(col(AuditLog.action) == action)))


@pytest.mark.parametrize("role", ["admin", "manager", "installer"])
def test_builders_see_the_gateway_page_with_its_report_and_keys(c: Console, role: str) -> None:
    c.login(role)
    r = c.client.get(_gw(c))
    assert r.status_code == 200
    assert c.site.flow.gateway in r.text
    for device in c.site.flow.meters:
        assert f">{device}</a>" in r.text
    assert "A栋 3F 301" in r.text  # each meter's room
    assert re.search(r'data-kid="k1" data-state="current"', r.text)
    assert 'id="rotate-key"' in r.text  # POST /gateways/{id}/keys: builders
    # PUT /meters/{id}/room: managers (and admins), not installers
    assert ("assign-form" in r.text) is (role != "installer")
    listing = c.client.get("/console/gateways").text
    assert f'href="{_gw(c)}"' in listing
    assert ('id="new-code"' in listing) is True


def test_the_gateway_page_shows_its_last_status_and_lines(c: Console) -> None:
    with c.factory() as s:
        s.add(
            GatewayStatusRow(
                gateway_id=c.site.flow.gateway_id,
                online=True,
                version="1.4.2",
                last_seen=T0,
                outbox_backlog=17,
                outbox_oldest_age_s=340,
                lines=[
                    {"name": "rs485-1", "url": "/dev/ttyUSB0", "transactions": 812, "timeouts": 3,
                     "errors": 1, "utilisation": "0.4200", "meters_online": 2, "meters_offline": 1},
                ],
            )
        )  # fmt: skip
        s.commit()
    c.login("installer")
    page = c.client.get(_gw(c)).text
    assert 'id="gateway-online">在线' in page
    assert "1.4.2" in page
    assert ">17 (" in page
    assert re.search(
        r'data-line="rs485-1"><td>rs485-1</td><td>/dev/ttyUSB0</td><td class="num">812</td>'
        r'<td class="num">3</td><td class="num">1</td>',
        page.replace("\n", ""),
    )


@pytest.mark.parametrize("role", ["finance", "tenant"])
def test_finance_and_tenants_are_refused(c: Console, role: str) -> None:
    csrf = c.login(role)
    for path in (_gw(c), "/console/dead-letters", "/console/provisioning-codes/new"):
        assert c.client.get(path, follow_redirects=False).status_code == 403, path
    r = c.client.post(f"{_gw(c)}/keys", data={"csrf": csrf, "overlap_h": "1"}, follow_redirects=False)
    assert r.status_code == 403
    assert set(_keys(c)) == {"k1"}


def test_an_installer_may_not_assign_a_meter(c: Console) -> None:
    csrf = c.login("installer")
    meter_id = c.site.flow.meters["m1"]
    r = c.client.post(f"{_gw(c)}/meters/{meter_id}/room", data={"csrf": csrf, "room_id": ""})
    assert r.status_code == 403
    with c.factory() as s:
        meter = s.get(Meter, meter_id)
        assert meter is not None
        assert meter.room_id is not None


def test_posts_without_the_session_csrf_are_refused(c: Console) -> None:
    c.login("manager")
    meter_id = c.site.flow.meters["m1"]
    for path, form in [
        (f"{_gw(c)}/keys", {"overlap_h": "1"}),
        (f"{_gw(c)}/keys/end-overlap", {"force": "on"}),
        (f"{_gw(c)}/meters/{meter_id}/room", {"room_id": ""}),
        ("/console/provisioning-codes", {"project_id": str(c.site.flow.project_id)}),
    ]:
        r = c.client.post(path, data=form | {"csrf": "forged"}, follow_redirects=False)
        assert r.status_code == 403, path
    assert set(_keys(c)) == {"k1"}
    assert c.count(ProvisioningCode) == 0


def test_another_organisations_gateway_is_missing(c: Console) -> None:
    other = make_flow_site(c.factory)
    csrf = c.login("manager")
    assert c.client.get(f"/console/gateways/{other.gateway_id}").status_code == 404
    r = c.client.post(f"/console/gateways/{other.gateway_id}/keys", data={"csrf": csrf, "overlap_h": "1"})
    assert r.status_code == 404
    r = c.client.post("/console/provisioning-codes", data={"csrf": csrf, "project_id": str(other.project_id)})
    assert r.status_code == 404
    assert c.count(ProvisioningCode) == 0


def test_rotation_shows_the_secret_once_and_end_overlap_retires_the_old_key(c: Console) -> None:
    csrf = c.login("manager")
    r = c.client.post(f"{_gw(c)}/keys", data={"csrf": csrf, "overlap_h": "6"})
    assert r.status_code == 201
    assert r.headers["cache-control"] == "no-store"
    kid = re.search(r'id="new-kid">([^<]+)<', r.text)
    secret = re.search(r'id="new-secret">([0-9a-f]+)<', r.text)
    assert kid is not None
    assert secret is not None
    assert kid.group(1) == "k2"
    stored = _keys(c)
    assert stored["k2"].secret == secret.group(1)
    assert stored["k1"].not_after is not None  # the overlap: k1 still valid for a while
    assert re.search(r'data-kid="k1" data-state="overlap"', r.text)
    [audit] = _audits(c, AuditAction.GATEWAY_KEY_ROTATED)
    assert audit.detail["kid"] == "k2"
    again = c.client.get(_gw(c)).text
    assert secret.group(1) not in again  # shown once
    assert re.search(r'data-kid="k2" data-state="current"', again)
    # the gateway has not used k2: ending the overlap would cut it off, so it is refused ...
    refused = c.client.post(f"{_gw(c)}/keys/end-overlap", data={"csrf": csrf}, follow_redirects=False)
    assert refused.status_code == 409
    assert "k2" in refused.text
    assert re.search(r'data-kid="k1" data-state="overlap"', c.client.get(_gw(c)).text)
    # ... unless forced
    r = c.client.post(
        f"{_gw(c)}/keys/end-overlap", data={"csrf": csrf, "force": "on"}, follow_redirects=False
    )
    assert r.status_code == 303
    shown = c.client.get(r.headers["location"]).text
    assert re.search(r'data-kid="k1" data-state="retired"', shown)
    assert re.search(r'data-kid="k2" data-state="current"', shown)
    assert 'id="end-overlap"' not in shown  # nothing overlaps any more


def test_a_manager_moves_a_meter_out_of_its_room_and_back(c: Console) -> None:
    csrf = c.login("manager")
    meter_id = c.site.flow.meters["m2"]
    with c.factory() as s:
        meter = s.get(Meter, meter_id)
        assert meter is not None
        room = meter.room_id
    r = c.client.post(
        f"{_gw(c)}/meters/{meter_id}/room", data={"csrf": csrf, "room_id": ""}, follow_redirects=False
    )
    assert r.status_code == 303
    page = c.client.get(r.headers["location"]).text
    assert re.search(rf'data-meter="{meter_id}">.*?data-room="">', page, re.S)
    r = c.client.post(f"{_gw(c)}/meters/{meter_id}/room", data={"csrf": csrf, "room_id": str(room)})
    assert r.status_code == 200  # followed to the page
    with c.factory() as s:
        meter = s.get(Meter, meter_id)
        assert meter is not None
        assert meter.room_id == room
    audits = _audits(c, AuditAction.METER_ASSIGNED)
    assert [a.detail["room"] for a in audits] == [None, room]
    bad = c.client.post(f"{_gw(c)}/meters/{meter_id}/room", data={"csrf": csrf, "room_id": "999999"})
    assert bad.status_code == 404


def test_a_provisioning_code_is_shown_once_and_registers_a_gateway(c: Console) -> None:
    csrf = c.login("installer")  # builders create codes (POST /projects/{id}/provisioning-codes)
    form = c.client.get("/console/provisioning-codes/new")
    assert form.status_code == 200
    assert 'id="create-code"' in form.text
    r = c.client.post(
        "/console/provisioning-codes",
        data={"csrf": csrf, "project_id": str(c.site.flow.project_id), "ttl_h": "4"},
    )
    assert r.status_code == 201
    assert r.headers["cache-control"] == "no-store"
    found = re.search(r'id="code">([A-Z0-9-]+)<', r.text)
    assert found is not None
    code = found.group(1)
    command = re.search(r'id="register-command">([^<]+)<', r.text)
    assert command is not None
    assert command.group(1) == (
        "meterflow edge register -c /etc/meterflow/edge.toml "
        f"--cloud http://testserver --code {code} --report site.json"
    )
    with c.factory() as s:
        [row] = s.scalars(select(ProvisioningCode)).all()
        assert row.code_sha256 == hashlib.sha256(code.replace("-", "").encode()).hexdigest()
        assert row.expires_at - row.created_at == timedelta(hours=4)
    for path in ("/console/gateways", "/console/provisioning-codes/new", _gw(c)):
        assert code not in c.client.get(path).text  # nothing shows it again
    registered = c.client.post(
        "/api/v1/gateways/register",
        json={
            "code": code,
            "gateway": {"id": "gw-new-site", "name": "B栋网关"},
            "meters": [{"id": "n1", "line": "rs485-1", "protocol": "dlt645", "address": "000000000101"}],
        },
    )
    assert registered.status_code == 201, registered.text
    new_id = registered.json()["id"]
    page = c.client.get(f"/console/gateways/{new_id}").text
    assert "gw-new-site" in page
    assert re.search(r">n1</a></td><td>rs485-1</td><td>dlt645</td><td>000000000101</td>", page)
    assert "未分配" in page  # registered, not yet in a room
    again = c.client.post(
        "/api/v1/gateways/register",
        json={"code": code, "gateway": {"id": "gw-other"}, "meters": []},
    )
    assert again.status_code == 401  # used once


def test_dead_letters_are_paged_newest_first_filtered_and_bounded(c: Console) -> None:
    other = make_flow_site(c.factory)
    marker = b"SECRET-TAIL"
    with c.factory() as s:
        for i in range(55):
            body = b'{"n": %d}' % i + b"x" * 100 + marker
            s.add(
                DeadLetter(
                    topic=f"mf/v1/{c.site.flow.gateway}/up/readings",
                    payload=body,
                    payload_size=len(body) + 4000,
                    payload_sha256=hashlib.sha256(body).hexdigest(),
                    reason=f"bad signature {i}",
                    gateway_device=c.site.flow.gateway,
                    received_at=T0 + timedelta(minutes=i),
                )
            )
        s.add(
            DeadLetter(
                topic=f"mf/v1/{other.gateway}/up/readings",
                payload=b"theirs",
                payload_size=6,
                payload_sha256="0" * 64,
                reason="another organisation's",
                gateway_device=other.gateway,
                received_at=T0,
            )
        )
        s.commit()
    c.login("installer")
    first = c.client.get("/console/dead-letters")
    assert first.status_code == 200
    reasons = re.findall(r"bad signature (\d+)<", first.text)
    assert [int(n) for n in reasons] == list(range(54, 4, -1))  # 50, newest first
    assert "another organisation" not in first.text
    assert marker.decode() not in first.text  # only the first bytes, never the whole message
    newest_size = 4000 + len(b'{"n": 54}') + 100 + len(marker)
    assert f'<td class="num">{newest_size}</td>' in first.text  # the full size
    nxt = re.search(r'id="next-page" href="([^"]+)"', first.text)
    assert nxt is not None
    second = c.client.get(nxt.group(1).replace("&amp;", "&"))
    assert [int(n) for n in re.findall(r"bad signature (\d+)<", second.text)] == [4, 3, 2, 1, 0]
    assert 'id="next-page"' not in second.text
    mine = c.client.get("/console/dead-letters", params={"gateway": c.site.flow.gateway}).text
    assert len(re.findall(r"bad signature", mine)) == 50
    theirs = c.client.get("/console/dead-letters", params={"gateway": other.gateway}).text
    assert "bad signature" not in theirs
    assert "another organisation" not in theirs
    assert c.client.get("/console/dead-letters", params={"after": "abc"}).status_code == 422
