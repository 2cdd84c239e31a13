"""Notification settings over HTTP: managers set channels and templates, finance sets phones, both
scoped to their organisation; bad values are refused naming the field; changes are audited."""

from __future__ import annotations

from sqlalchemy import select
from sqlmodel import col

from cloud.models import AuditLog, NotifyContact, Role, StaffContact
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


def _user_id(http: Api, headers: dict[str, str]) -> int:
    return int(http.get("/auth/me", headers)["id"])


def test_staff_contacts_their_own_their_managers_and_no_one_elses(api: Api) -> None:  # noqa: F811
    admin = api.login("root")
    a = _site(api, admin, "物业A")
    b = _site(api, admin, "物业B")
    mgr_a, mgr_b = api.login(f"mgr-{a['org']}"), api.login(f"mgr-{b['org']}")
    finance = api.user("fin-a", Role.FINANCE, a["org"])
    installer = api.user("inst-a", Role.INSTALLER, a["org"])
    fin_id = _user_id(api, finance)
    # nothing set yet: no phone, zh, no notices
    assert api.get("/auth/me/notify-contact", finance) == {
        "user_id": fin_id, "phone": "", "wechat_openid": "", "lang": "zh", "notices": []
    }  # fmt: skip
    # a user sets their own
    mine = {"phone": "+8613900000003", "lang": "en", "notices": ["topup_failed"]}
    saved = _put(api, "/auth/me/notify-contact", finance, mine)
    assert (saved["phone"], saved["lang"], saved["notices"]) == ("+8613900000003", "en", ["topup_failed"])
    # their manager sets it for them; the finance user sees it
    body = {
        "phone": "13900000003",
        "wechat_openid": "o-fin-1",
        "notices": ["holds_waiting", "gateway_offline"],
    }
    _put(api, f"/users/{fin_id}/notify-contact", mgr_a, body)
    seen = api.get("/auth/me/notify-contact", finance)
    assert seen["notices"] == ["gateway_offline", "holds_waiting"]
    assert (seen["phone"], seen["wechat_openid"], seen["lang"]) == ("13900000003", "o-fin-1", "zh")
    # another organisation's manager: as if the user did not exist; staff do not set each other's
    _put(api, f"/users/{fin_id}/notify-contact", mgr_b, body, 404)
    api.get(f"/users/{fin_id}/notify-contact", mgr_b, 404)
    _put(api, f"/users/{fin_id}/notify-contact", installer, body, 403)
    # tenants' notices are not managers' notices; a phone is a phone
    for bad, field in (
        ({**body, "notices": ["final_notice"]}, "notices"),
        ({**body, "phone": "call me"}, "phone"),
        ({**body, "lang": "fr"}, "lang"),
        ({**body, "wechat_openid": "a b"}, "wechat_openid"),
    ):
        r = api.client.put(f"/api/v1/users/{fin_id}/notify-contact", json=bad, headers=mgr_a)
        assert r.status_code == 422, r.text
        assert field in r.text
    mgr_id = _user_id(api, mgr_a)
    with api.factory() as s:
        row = s.scalars(select(StaffContact)).one()
        assert (row.user_id, row.phone, row.notices) == (
            fin_id,
            "13900000003",
            ["gateway_offline", "holds_waiting"],
        )
        actions = s.scalars(
            select(AuditLog).where(col(AuditLog.action) == "staff_contact_changed").order_by(col(AuditLog.id))
        ).all()
        assert [(x.target_id, x.user_id) for x in actions] == [
            (str(fin_id), fin_id),
            (str(fin_id), mgr_id),
        ]
