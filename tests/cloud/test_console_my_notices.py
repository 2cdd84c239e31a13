"""'My notices' in the console (/console/my-notices): a member of staff sets their own phone, language
and the manager notices they want — PUT /auth/me/notify-contact's model and service — over HTTP on
SQLite and PostgreSQL: saved and audited, a bad phone refused beside its field with nothing written, no
CSRF token refused, a platform administrator shown why they get none."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, select
from sqlmodel import col

from cloud.models import AuditLog, StaffContact, User
from tests.browser.consolekit import Console, serve_console


@pytest.fixture
def c(engine: Engine, db_url: str) -> Iterator[Console]:
    with serve_console(engine, db_url) as console:
        yield console


def _contact(c: Console, role: str) -> StaffContact | None:
    with c.factory() as s:
        user = s.scalars(select(User).where(col(User.username) == c.site.logins[role])).one()
        return s.scalars(select(StaffContact).where(col(StaffContact.user_id) == user.id)).first()


def test_a_manager_opts_in_and_it_is_saved_and_audited(c: Console) -> None:
    csrf = c.login("manager")
    page = c.client.get("/console/my-notices")
    assert page.status_code == 200
    assert 'id="contact-form"' in page.text
    form = {
        "csrf": csrf,
        "phone": "13900000123",
        "lang": "en",
        "notices": ["gateway_offline", "holds_waiting"],
    }
    r = c.client.post("/console/my-notices", data=form, follow_redirects=False)
    assert r.status_code == 303, r.text
    saved = _contact(c, "manager")
    assert saved is not None
    assert saved.phone == "13900000123"
    assert saved.lang == "en"
    assert sorted(saved.notices) == ["gateway_offline", "holds_waiting"]
    assert c.count(AuditLog, col(AuditLog.action) == "staff_contact_changed") == 1
    again = c.client.get("/console/my-notices?done=saved").text
    assert 'id="saved"' in again
    assert 'value="13900000123"' in again
    assert 'value="holds_waiting" checked' in again
    assert 'value="topup_failed" checked' not in again


def test_a_bad_phone_is_refused_beside_it_and_nothing_is_written(c: Console) -> None:
    csrf = c.login("finance")
    r = c.client.post(
        "/console/my-notices", data={"csrf": csrf, "phone": "call me", "notices": ["topup_failed"]}
    )
    assert r.status_code == 422
    assert 'data-field="phone"' in r.text
    assert _contact(c, "finance") is None
    unknown = c.client.post("/console/my-notices", data={"csrf": csrf, "notices": ["everything"]})
    assert unknown.status_code == 422
    assert 'data-field="notices"' in unknown.text
    assert _contact(c, "finance") is None


def test_no_csrf_token_no_change(c: Console) -> None:
    c.login("installer")
    r = c.client.post("/console/my-notices", data={"phone": "13900000999"}, follow_redirects=False)
    assert r.status_code == 403
    assert _contact(c, "installer") is None


def test_a_platform_administrator_is_told_they_get_none(c: Console) -> None:
    from cloud.models import Role
    from cloud.services import users
    from tests.browser.consolekit import PASSWORD

    with c.factory() as s:
        users.create_user(s, username="platform", password=PASSWORD, role=Role.ADMIN, org_id=None)
        s.commit()
    c.site.logins["platform"] = "platform"
    c.login("platform")
    page = c.client.get("/console/my-notices")
    assert page.status_code == 200
    assert 'id="not-editable"' in page.text
    assert 'id="save-contact"' not in page.text
