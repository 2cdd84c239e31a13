"""Per-channel rate limits: a one-second window, shared through Redis by every replica, or per process;
a sender over the limit defers the message a second without spending an attempt."""

from __future__ import annotations

import socket
import uuid
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from cloud.models import NotificationOutbox
from cloud.services.notify.channels import LogChannel
from cloud.services.notify.ratelimit import LocalRateLimiter, RateLimiter, RedisRateLimiter
from cloud.services.notify.sender import Sender
from tests.cloud.conftest import Site
from tests.cloud.notify.test_sender import NOON, _notices


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1.0):
            return True
    except OSError:
        return False


def _two_limiters(kind: str, clock: list[float]) -> list[RateLimiter]:
    if kind == "local":
        shared = LocalRateLimiter({"sms_aliyun": 3}, clock=lambda: clock[0])
        return [shared, shared]
    if not _redis_up():
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    import redis

    prefix = f"mf:test:{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    return [RedisRateLimiter(client, {"sms_aliyun": 3}, prefix, clock=lambda: clock[0]) for _ in range(2)]


@pytest.mark.parametrize("kind", ["local", "redis"])
def test_three_per_second_across_replicas(kind: str) -> None:
    clock = [1_000_000.2]
    a, b = _two_limiters(kind, clock)
    assert [a.allow("sms_aliyun"), b.allow("sms_aliyun"), a.allow("sms_aliyun")] == [True, True, True]
    assert not b.allow("sms_aliyun")  # the fourth in this second, whichever replica asks
    assert a.allow("log")  # other channels have their own (here: no) limit
    clock[0] += 1.0
    assert b.allow("sms_aliyun")


class _Never:
    def allow(self, channel: str) -> bool:
        return False


def test_a_rate_limited_notice_waits_without_spending_an_attempt(
    session_factory: sessionmaker[Session], site: Site
) -> None:
    (row_id,) = _notices(session_factory, site, ["final_notice"])
    log = LogChannel()
    sender = Sender(session_factory, {"log": log}, runner="a", limiter=_Never(), clock=lambda: NOON)
    assert sender.run_once() == 1
    sender.close()
    with session_factory() as s:
        row = s.get(NotificationOutbox, row_id)
        assert row is not None
        assert (row.status, row.attempts, row.next_try_at) == ("pending", 0, NOON + timedelta(seconds=1))
    assert log.lines == []
