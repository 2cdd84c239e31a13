"""WeChat channels through wechatpy against the WeChat API simulator: a subscribe message spends one
one-shot consent; without one (ours or WeChat's 43101) the notice falls back to the next channel;
template messages need a follower."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col
from wechatpy.session.memorystorage import MemoryStorage

from cloud.integrations.wechat_client import wechat_client_for
from cloud.models import NotificationOutbox, NotifyConsent, NotifyContact, NotifySettings
from cloud.services.notify.channels import Channel, LogChannel, WeChatSubscribe, WeChatTemplate
from cloud.services.notify.sender import Sender
from tests.cloud.conftest import Site
from vendor_sim.serve import Served
from vendor_sim.wechat.app import run_wechat
from vendor_sim.wechat.login import WeChatSim
from vendor_sim.wechat.messages import Messages, messages_of

NOON = datetime(2026, 11, 24, 4, 0, tzinfo=UTC)
MP, OA, OPENID, OA_OPENID = "wx-mp-1", "wx-oa-1", "o-tenant-1", "o-follower-1"
KEYWORDS = ("account", "balance", "time")


@pytest.fixture
def wechat() -> Iterator[tuple[WeChatSim, Served]]:
    sim = WeChatSim()
    sim.add_app(MP, "mp-secret")
    sim.add_app(OA, "oa-secret", kind="official")
    box = messages_of(sim)
    box.templates["TPL_FINAL"] = KEYWORDS
    box.templates["TPL_OA_FINAL"] = KEYWORDS
    with run_wechat(sim) as served:
        yield sim, served


def _channels(served: Served, log: LogChannel) -> dict[str, Channel]:
    mp = wechat_client_for(MP, "mp-secret", served.base_url, MemoryStorage())
    oa = wechat_client_for(OA, "oa-secret", served.base_url, MemoryStorage())
    return {"wechat_subscribe": WeChatSubscribe(mp), "wechat_template": WeChatTemplate(oa), "log": log}


def _setup(factory: sessionmaker[Session], site: Site, channels: list[str], consents: int) -> None:
    with factory() as s:
        s.add(
            NotifySettings(
                org_id=site.org_id,
                project_id=site.project_id,
                channels=channels,
                templates={
                    "final_notice": {"wechat_subscribe": "TPL_FINAL", "wechat_template": "TPL_OA_FINAL"}
                },
            )
        )
        s.add(
            NotifyContact(
                org_id=site.org_id,
                account_id=site.account_id,
                miniprogram_openid=OPENID,
                official_openid=OA_OPENID,
            )
        )
        s.add(
            NotifyConsent(
                org_id=site.org_id, account_id=site.account_id, template_id="TPL_FINAL", granted=consents
            )
        )
        s.commit()


def _final_notices(factory: sessionmaker[Session], site: Site, n: int) -> None:
    with factory() as s:
        for i in range(n):
            s.add(
                NotificationOutbox(
                    org_id=site.org_id,
                    account_id=site.account_id,
                    kind="final_notice",
                    dedupe_key=f"final:{i}",
                    payload={"account": "A-1", "balance_fen": -450},
                    created_at=NOON,
                )
            )
        s.commit()


def _run(factory: sessionmaker[Session], channels: dict[str, Channel]) -> list[tuple[str, str]]:
    sender = Sender(factory, channels, runner="t", clock=lambda: NOON)
    sender.run_once()
    sender.close()
    with factory() as s:
        rows = s.scalars(select(NotificationOutbox).order_by(col(NotificationOutbox.id)))
        return [(r.status, r.channel) for r in rows]


def _box(sim: WeChatSim) -> Messages:
    return messages_of(sim)


def test_one_message_per_consent_then_the_next_channel(
    session_factory: sessionmaker[Session], site: Site, wechat: tuple[WeChatSim, Served]
) -> None:
    sim, served = wechat
    _setup(session_factory, site, ["wechat_subscribe", "log"], consents=1)
    _box(sim).grant(MP, OPENID, "TPL_FINAL")  # the tenant tapped 允许 once
    _final_notices(session_factory, site, 2)
    log = LogChannel()
    # two notices, one consent: whichever is sent first takes it, the other falls back
    assert sorted(_run(session_factory, _channels(served, log))) == [
        ("delivered", "log"),
        ("delivered", "wechat_subscribe"),
    ]
    (message,) = _box(sim).sent
    assert message["data"]["balance"] == {"value": "-4.50 元"}  # −450 fen
    assert message["openid"] == OPENID
    assert len(log.lines) == 1
    with session_factory() as s:
        consent = s.scalars(select(NotifyConsent)).one()
        assert (consent.granted, consent.used) == (1, 1)


def test_wechat_refusing_for_want_of_consent_falls_back(
    session_factory: sessionmaker[Session], site: Site, wechat: tuple[WeChatSim, Served]
) -> None:
    sim, served = wechat
    _setup(session_factory, site, ["wechat_subscribe", "wechat_template", "log"], consents=1)
    # our record says one consent, WeChat has none (43101): the official account carries it instead
    _box(sim).follow(OA, OA_OPENID)
    _final_notices(session_factory, site, 1)
    log = LogChannel()
    assert _run(session_factory, _channels(served, log)) == [("delivered", "wechat_template")]
    (message,) = _box(sim).sent
    assert (message["kind"], message["openid"], message["template_id"]) == (
        "template",
        OA_OPENID,
        "TPL_OA_FINAL",
    )
    assert log.lines == []


def test_a_template_message_to_a_non_follower_is_refused(
    session_factory: sessionmaker[Session], site: Site, wechat: tuple[WeChatSim, Served]
) -> None:
    sim, served = wechat
    _setup(session_factory, site, ["wechat_template", "log"], consents=0)
    _final_notices(session_factory, site, 1)
    log = LogChannel()
    assert _run(session_factory, _channels(served, log)) == [("delivered", "log")]
    assert _box(sim).sent == []
    with session_factory() as s:
        row = s.scalars(select(NotificationOutbox)).one()
        assert row.channel_pos == 1
