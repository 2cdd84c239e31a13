"""Notification settings over HTTP: managers set channels and templates, finance sets phones, both
scoped to their organisation; bad values are refused naming the field; changes are audited."""

from __future__ import annotations

from sqlalchemy import select
from sqlmodel import col

from cloud.models import AuditLog, NotifyContact, Role
from tests.cloud.test_api import Api, _site, api  # noqa: F401  (the fixture)


def _put(http: Api, path: str, headers: dict[str, str], body: object, status: int = 200) -> dict[str, object]:
    r = http.client.put(f"/api/v1{path}", json=body, headers=headers)
    assert r.status_code == status, r.text
    return r.json()  # type: ignore[no-any-return]


def test_settings_contact_scoping_and_validation(api: Api) -> None:  # noqa: F811
    admin = api.login("root")
    a = _site(api, admin, "物业A")
    b = _site(api, admin, "物业B")
    mgr_a, mgr_b = api.login(f"mgr-{a['org']}"), api.login(f"mgr-{b['org']}")
    defaults = api.get(f"/projects/{a['project']}/notify-settings", mgr_a)
    assert (defaults["channels"], defaults["quiet_start"], defaults["lang"]) == (["log"], "22:00", "zh")
    body = {
        "channels": ["wechat_subscribe", "sms_aliyun", "log"],
        "sms_sign": "阳光物业",
        "templates": {"final_notice": {"sms_aliyun": "SMS_123", "wechat_subscribe": "tpl-abc"}},
        "quiet_start": "21:30",
        "quiet_end": "07:30",
    }
    saved = _put(api, f"/projects/{a['project']}/notify-settings", mgr_a, body)
    assert saved["templates"] == body["templates"]
    assert api.get(f"/projects/{a['project']}/notify-settings", mgr_a)["channels"] == body["channels"]
    # another organisation's manager sees nothing and changes nothing
    api.get(f"/projects/{a['project']}/notify-settings", mgr_b, 404)
    _put(api, f"/projects/{a['project']}/notify-settings", mgr_b, body, 404)
    _put(api, f"/accounts/{a['account']}/contact", mgr_b, {"phone": "13800000000"}, 404)
    # an installer does not set the site's voice
    installer = api.user("inst-a", Role.INSTALLER, a["org"])
    _put(api, f"/projects/{a['project']}/notify-settings", installer, body, 403)
    # bad values are refused, naming the field, nothing stored
    for bad, field in (
        ({**body, "channels": ["fax"]}, "channels"),
        ({**body, "channels": []}, "channels"),
        ({**body, "quiet_start": "25:00"}, "quiet_start"),
        ({**body, "templates": {"final_notice": {"sms_aliyun": "x" * 65}}}, "templates"),
        ({**body, "templates": {"final_notice": {"sms_aliyun": "a b"}}}, "templates"),
        ({**body, "templates": {"party": {"sms_aliyun": "SMS_1"}}}, "templates"),
        ({**body, "sms_sign": "签" * 33}, "sms_sign"),
    ):
        r = api.client.put(f"/api/v1/projects/{a['project']}/notify-settings", json=bad, headers=mgr_a)
        assert r.status_code == 422, r.text
        assert field in r.text
    assert api.get(f"/projects/{a['project']}/notify-settings", mgr_a)["templates"] == body["templates"]
    contact = _put(api, f"/accounts/{a['account']}/contact", mgr_a, {"phone": "13800000000", "lang": "en"})
    assert contact == {"account_id": a["account"], "phone": "13800000000", "lang": "en", "wechat": False}
    r = api.client.put(f"/api/v1/accounts/{a['account']}/contact", json={"phone": "call me"}, headers=mgr_a)
    assert r.status_code == 422
    assert "phone" in r.text
    with api.factory() as s:
        assert s.scalars(select(NotifyContact)).one().phone == "13800000000"
        actions = sorted(
            x.action
            for x in s.scalars(select(AuditLog).where(col(AuditLog.target_type).in_(["project", "account"])))
            if x.action.startswith("notify")
        )
    assert actions == ["notify_contact_changed", "notify_settings_changed"]
