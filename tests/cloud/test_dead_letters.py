"""Dead letters as someone with publish rights on the broker makes them: oversized, floods, NUL in the
text. Through the real broker into the ingest, on both engines; what the API returns; the cap on the
table; and migration 0010 over rows stored whole by older versions."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.api import build_app
from cloud.db import create_database, drop_database, make_engine, make_session_factory
from cloud.integrations.mqtt import MqttConfig, MqttLink, ingest_filter
from cloud.migrations import upgrade
from cloud.models import DeadLetter, Role
from cloud.services import dead_letters, users
from cloud.services.ingest import Ingest
from cloud.settings import Settings
from tests.cloud.flowkit import make_flow_site

with warnings.catch_warnings():
    from starlette.exceptions import StarletteDeprecationWarning

    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
MiB = 1024 * 1024


def _letters(factory: sessionmaker[Session]) -> list[DeadLetter]:
    with factory() as session:
        return list(session.scalars(select(DeadLetter).order_by(col(DeadLetter.id))))


@pytest.mark.services
def test_an_oversized_message_through_the_broker_is_kept_as_prefix_size_and_hash(
    session_factory: sessionmaker[Session], engine: Engine, mqtt_broker: tuple[str, int], unique_prefix: str
) -> None:
    site = make_flow_site(session_factory, prefix=unique_prefix)
    ingest = Ingest(session_factory, prefix=unique_prefix, clock=lambda: NOW)
    host, port = mqtt_broker
    link = MqttLink(
        MqttConfig(host=host, port=port, client_id=f"dl-{uuid.uuid4().hex[:8]}", clean_start=True),
        subscriptions=[ingest_filter(unique_prefix, shared=False, group="g")],
        handler=ingest.handle,
    )
    attacker = MqttLink(
        MqttConfig(host=host, port=port, client_id=f"at-{uuid.uuid4().hex[:8]}", clean_start=True)
    )
    huge = b"{" + b"\x00\xff" * (3 * MiB)  # 6 MiB: over the contract's 4 MiB, NUL bytes included
    topic = f"{unique_prefix}/gw/{site.gateway}/up/readings"
    link.start()
    attacker.start()
    try:
        attacker.publish(topic, huge)
        attacker.publish(f"{unique_prefix}/gw/{site.gateway}/up/events", b"short but not json")
        deadline = time.monotonic() + 60
        while len(_letters(session_factory)) < 2:
            assert time.monotonic() < deadline, "the ingest did not dead-letter the messages"
            time.sleep(0.1)
    finally:
        attacker.stop()
        link.stop()
    big, small = _letters(session_factory)
    assert (len(big.payload), big.payload_size) == (dead_letters.PREFIX_BYTES, len(huge))
    assert bytes(big.payload) == huge[: dead_letters.PREFIX_BYTES]
    assert big.payload_sha256 == hashlib.sha256(huge).hexdigest()
    assert "too large" in big.reason
    assert (bytes(small.payload), small.payload_size) == (b"short but not json", 18)

    # what the API shows a manager of the gateway's organisation: the prefix, the size and the hash
    settings = Settings(environment="test", secret_key="d" * 32, database_url=str(engine.url))  # type: ignore[arg-type]
    with session_factory() as session:
        users.create_user(
            session, username="mgr", password="correct horse", role=Role.MANAGER, org_id=site.org_id
        )
        session.commit()
    with TestClient(build_app(settings, engine=engine)) as client:
        login = client.post("/api/v1/auth/login", json={"username": "mgr", "password": "correct horse"})
        r = client.get(
            "/api/v1/dead-letters", headers={"Authorization": f"Bearer {login.json()['access_token']}"}
        )
    assert r.status_code == 200
    assert len(r.content) < 16 * 1024
    newest, oldest = r.json()
    assert newest["payload_truncated"] is False
    assert oldest["payload_size"] == len(huge)
    assert oldest["payload_sha256"] == hashlib.sha256(huge).hexdigest()
    assert oldest["payload_truncated"] is True
    assert base64.b64decode(oldest["payload_b64"]) == huge[: dead_letters.PREFIX_BYTES]


def test_the_table_is_capped_to_the_newest_rows(
    session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dead_letters, "MAX_ROWS", 25)  # the real cap is 10,000; same rule
    ingest = Ingest(session_factory, clock=lambda: NOW)
    for i in range(60):  # a flood of garbage from anyone with publish rights
        ingest.handle(f"mf/v1/gw/flood/up/readings{i}", f"garbage {i}".encode() * 1000)
    letters = _letters(session_factory)
    assert len(letters) == 25
    assert [bytes(d.payload)[:10] for d in letters[-2:]] == [b"garbage 58", b"garbage 59"]
    assert all(len(d.payload) <= dead_letters.PREFIX_BYTES for d in letters)
    assert ingest.stats.dead_letters == 60


def test_nul_and_huge_text_in_a_dead_letter_are_stored_not_fatal(
    session_factory: sessionmaker[Session],
) -> None:
    """PostgreSQL text holds no NUL: the dead letter of a message must not itself fail (the MQTT adapter
    would then withhold the PUBACK and get the message again forever)."""
    with session_factory() as session:
        row = dead_letters.record(
            session,
            topic="mf/v1/gw/\x00evil/up/x" + "t" * 70_000,
            payload=b"",
            reason="bad \x00 reason " + "r" * 5000,
            gateway="gw\x00" + "g" * 100,
            at=NOW,
        )
        session.commit()
        assert len(row.topic) <= 300
        assert "\x00" not in row.topic + row.reason + (row.gateway_device or "")
        assert (row.payload_size, row.payload_sha256) == (0, hashlib.sha256(b"").hexdigest())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def at_0006(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
        upgrade(url, "0006")
        yield url
        return
    url = create_database(request.getfixturevalue("postgres_url"))
    try:
        upgrade(url, "0006")
        yield url
    finally:
        drop_database(url)


def test_migration_0010_bounds_rows_stored_whole(at_0006: str) -> None:
    engine = make_engine(at_0006)
    old = [b"x" * 10_000, b"small", b""]
    try:
        with engine.begin() as conn:
            for payload in old:
                conn.execute(
                    text(
                        "INSERT INTO dead_letter (topic, payload, reason, gateway_device, received_at) "
                        "VALUES ('t', :p, 'r', NULL, :at)"
                    ),
                    {"p": payload, "at": NOW},
                )
        upgrade(at_0006)
        with make_session_factory(engine)() as session:
            rows = list(session.scalars(select(DeadLetter).order_by(col(DeadLetter.id))))
            assert [(len(r.payload), r.payload_size) for r in rows] == [(4096, 10_000), (5, 5), (0, 0)]
            assert [r.payload_sha256 for r in rows] == [hashlib.sha256(p).hexdigest() for p in old]
            assert session.scalar(select(func.count()).select_from(DeadLetter)) == 3
    finally:
        engine.dispose()
