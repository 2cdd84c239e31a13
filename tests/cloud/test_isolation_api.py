"""The API refuses every setting that the background work could not apply (issue 9, isolation).

A manager types a project's policy and a tariff's prices; the ingest, the reconciler and the jobs
read them back for every batch, wake-up and minute. Whatever the API accepts must therefore be usable
there: a time zone from tzdata, a real time of day, thresholds in order, bounded numbers, prices and
names that rate without overflow. Each refusal is a 422 that names the field.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from cloud.domain.errors import PolicyError
from cloud.domain.localtime import time_of_day, zone
from cloud.models import Role
from cloud.settings import load_settings
from tests.cloud.test_api import Api, serve_api


@pytest.fixture
def api(engine: Engine, session_factory: sessionmaker[Session]) -> Iterator[Api]:
    with serve_api(engine, session_factory) as api:
        yield api


@pytest.fixture
def manager(api: Api) -> dict[str, str]:
    admin = api.login("root")
    org = api.post("/organisations", admin, {"name": "物业甲"})["id"]
    return api.user("mgr", Role.MANAGER, org)


def _refused(api: Api, path: str, headers: dict[str, str], body: dict[str, Any]) -> str:
    """POST ``body``; it must be a 422. Returns the response text (where the field is named)."""
    r = api.client.post(f"/api/v1{path}", json=body, headers=headers)
    assert r.status_code == 422, r.text
    return r.text[:2000]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timezone", "Mars/Olympus"),  # issue 9, problem 1
        ("timezone", "../../../etc/passwd"),
        ("timezone", ""),
        ("timezone", "Asia/" + "x" * 200),
        ("timezone", "asia/shanghai"),
        ("friendly_start", "99:99"),  # issue 9, problem 1
        ("friendly_start", "24:00"),
        ("friendly_start", "18:60"),
        ("friendly_end", "9:00"),
        ("friendly_end", "09:00:00"),
        ("friendly_end", "1８:00"),  # a full-width digit: \d would take it
        ("alarm1_fen", 10**11),
        ("alarm3_fen", -(10**11)),
        ("credit_limit_fen", 10**11),
        ("credit_limit_fen", -1),
        ("grace_period_s", 400 * 86_400),
        ("grace_period_s", -1),
    ],
)
def test_project_settings_are_refused_naming_the_field(
    api: Api, manager: dict[str, str], field: str, value: object
) -> None:
    text = _refused(api, "/projects", manager, {"name": "一期", field: value})
    assert field in text


def test_alarm_thresholds_out_of_order_are_refused(api: Api, manager: dict[str, str]) -> None:
    """``Policy`` refuses thresholds that do not strictly decrease: every account of the project
    would fail its evaluation."""
    for levels in (
        {"alarm1_fen": 500, "alarm2_fen": 2000},
        {"alarm1_fen": 2000, "alarm2_fen": 500, "alarm3_fen": 500},
    ):
        text = _refused(api, "/projects", manager, {"name": "一期"} | levels)
        assert "alarm1_fen > alarm2_fen > alarm3_fen" in text


def test_usable_settings_are_accepted_and_read_back(api: Api, manager: dict[str, str]) -> None:
    body = {
        "name": "巴黎项目",
        "timezone": "Europe/Paris",
        "friendly_start": "00:00",
        "friendly_end": "23:59",
        "alarm1_fen": 10**10,
        "alarm2_fen": 0,
        "alarm3_fen": -(10**10),
        "credit_limit_fen": 10**10,
        "grace_period_s": 366 * 86_400,
    }
    project = api.post("/projects", manager, body)
    assert {k: project[k] for k in body} == body


def _tariff(api: Api, headers: dict[str, str], kind: str = "flat") -> int:
    tariff_id: int = api.post("/tariffs", headers, {"name": f"电价-{kind}", "kind": kind})["id"]
    return tariff_id


@pytest.mark.parametrize(
    ("kind", "spec", "named"),
    [
        ("flat", {"kind": "flat", "price_milli": 10**30}, "price_milli"),  # issue 9, problem 2
        ("flat", {"kind": "flat", "price_milli": 100_000_001}, "price_milli"),
        (
            "flat",
            {"kind": "flat", "price_milli": 1000, "name": "x" * 1_000_000},
            "name",
        ),  # problem 2 (1 MB; a MiB is the body limit: 413)
        ("flat", {"kind": "flat", "price": "1" * 100_000}, "price"),
        ("flat", {"kind": "flat", "price": "1e999999999"}, "price"),
        ("flat", {"kind": "flat", "price": "1e30"}, "price_milli"),
        # the one spec reader (TariffVersion.from_spec) names the register, not just the unit
        ("tou", {"kind": "tou", "tou_prices": {"energy_t1_kwh": 10**30}}, "tou_prices.energy_t1_kwh"),
        ("tou", {"kind": "tou", "tou_prices_yuan": {"energy_t1_kwh": "9" * 1000}}, "tou_prices_yuan"),
        (
            "tiered",
            {
                "kind": "tiered",
                "tiers": [{"upto": str(i + 1), "price": "0.5"} for i in range(16)]
                + [{"upto": None, "price": "0.6"}],
            },
            "tiers",
        ),
        (
            "tiered",
            {
                "kind": "tiered",
                "tiers": [{"upto": "1e999999", "price": "0.5"}, {"upto": None, "price": "0.6"}],
            },
            "upto",
        ),
        (
            "tiered",
            {
                "kind": "tiered",
                "tiers": [{"upto": "0.0000001", "price": "0.5"}, {"upto": None, "price": "0.6"}],
            },
            "upto",
        ),
        (
            "tiered",
            {
                "kind": "tiered",
                "tiers": [{"upto": "1" * 5000, "price": "0.5"}, {"upto": None, "price": "0.6"}],
            },
            "upto",
        ),
    ],
)
def test_absurd_tariff_versions_are_refused_naming_the_field(
    api: Api, manager: dict[str, str], kind: str, spec: dict[str, Any], named: str
) -> None:
    tariff = _tariff(api, manager, kind)
    future = (api.clock.now + timedelta(days=1)).isoformat()
    text = _refused(api, f"/tariffs/{tariff}/versions", manager, {"effective_from": future, "spec": spec})
    assert named in text
    assert len(text) < 2000  # the refusal does not echo a megabyte back


def test_the_highest_price_is_accepted(api: Api, manager: dict[str, str]) -> None:
    tariff = _tariff(api, manager)
    future = (api.clock.now + timedelta(days=1)).isoformat()
    body = {"effective_from": future, "spec": {"kind": "flat", "price": "1000", "name": "商业"}}
    version = api.post(f"/tariffs/{tariff}/versions", manager, body)
    assert version["spec"]["price_milli"] == 100_000_000


def test_the_service_refuses_an_unknown_default_time_zone() -> None:
    with pytest.raises(ValidationError, match="MF_TIMEZONE"):
        load_settings(timezone="Mars/Olympus")
    assert load_settings(timezone="UTC").timezone == "UTC"


def test_local_time_readers() -> None:
    assert str(zone("Asia/Shanghai")) == "Asia/Shanghai"
    assert time_of_day("00:00").isoformat() == "00:00:00"
    assert time_of_day("23:59").isoformat() == "23:59:00"
    for bad_zone in ("Mars/Olympus", "", "posixrules", "Asia/Shanghai\x00", 8):
        with pytest.raises(PolicyError, match="time zone"):
            zone(bad_zone)  # type: ignore[arg-type]
    for bad_time in ("99:99", "24:00", " 9:00", "09:0", "0900", "09:00 ", "x" * 10**6, None):
        with pytest.raises(PolicyError, match="HH:MM"):
            time_of_day(bad_time)  # type: ignore[arg-type]
