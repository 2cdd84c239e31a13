"""The alarms page's query on SQLite and PostgreSQL: the acknowledged / cleared split reads the JSON
detail (``detail ->> 'cleared_by'``), which each database spells differently; scoping by organisation
and the installers' kinds hold on both."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from cloud.api.access import alarm_kinds_for
from cloud.console.alarms import AlarmFilter, alarm_rows
from cloud.models import Alarm, Organisation, Role
from cloud.services import operations
from cloud.services.audit import Actor
from tests.cloud.flowkit import make_flow_site

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def test_states_kinds_and_organisations(session_factory: sessionmaker[Session]) -> None:
    site = make_flow_site(session_factory)
    manager = Actor(user_id=None, org_id=site.org_id, role="manager", username="mgr")
    with session_factory() as s:
        other = Organisation(name="别家物业")
        s.add(other)
        s.flush()

        def add(kind: str, key: str, org: int | None = site.org_id, **fields: Any) -> int:
            alarm = Alarm(org_id=org, kind=kind, dedupe_key=key, **fields)
            s.add(alarm)
            s.flush()
            assert alarm.id is not None
            return alarm.id

        open_ = add("meter_offline", "o")
        to_ack = add("gateway_offline", "g")
        by_system = add("arrears", "a", cleared_at=NOW, detail={"cleared_by": "balance"})
        no_detail = add("meter_offline", "n", cleared_at=NOW)  # cleared without saying by whom
        add("meter_offline", "theirs", org=other.id)
        operations.acknowledge_alarm(s, manager, to_ack, NOW)
        s.commit()

        def ids(state: str = "", kinds: frozenset[str] | None = None) -> list[int]:
            rows = alarm_rows(s, manager, AlarmFilter(state=state), kinds=kinds)
            return [r.alarm.id or 0 for r in rows]

        assert ids() == [no_detail, by_system, to_ack, open_]  # newest first, not the other org's
        assert ids("open") == [open_]
        assert ids("acknowledged") == [to_ack]
        assert ids("cleared") == [no_detail, by_system]
        assert ids(kinds=alarm_kinds_for(Role.INSTALLER)) == [no_detail, to_ack, open_]  # no arrears
        acked = alarm_rows(s, manager, AlarmFilter(state="acknowledged"), kinds=None)[0]
        assert (acked.state, acked.acknowledged_by) == ("acknowledged", "mgr")


def test_every_alarm_kind_has_a_label_in_both_languages() -> None:
    from cloud.console.i18n import MESSAGES
    from cloud.models import AlarmKind

    missing = [k.value for k in AlarmKind if f"alarm_kind_{k.value}" not in MESSAGES]
    assert missing == []
