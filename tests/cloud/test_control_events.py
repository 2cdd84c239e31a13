"""The event bus that wakes the reconciler: in-process, and Redis pub/sub across processes."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import pytest

from cloud.events import AsyncSubscription, LocalEventBus, RedisEventBus


def test_local_bus_fans_out_and_survives_a_failing_subscriber() -> None:
    bus = LocalEventBus()
    got: list[tuple[str, dict[str, Any]]] = []

    def broken(kind: str, payload: dict[str, Any]) -> None:
        raise RuntimeError("subscriber bug")

    bus.subscribe(broken)
    remove = bus.subscribe(lambda k, p: got.append((k, p)))
    bus.publish("balance_changed", {"account_id": 1})
    remove()
    bus.publish("balance_changed", {"account_id": 2})
    assert got == [("balance_changed", {"account_id": 1})]


async def test_async_subscription_filters_kinds_across_threads() -> None:
    bus = LocalEventBus()
    sub = AsyncSubscription(bus, {"desired_changed"}, asyncio.get_running_loop())
    thread = threading.Thread(target=lambda: [bus.publish(k, {"n": 1}) for k in ("other", "desired_changed")])
    thread.start()
    thread.join()
    assert await asyncio.wait_for(sub.queue.get(), 2) == ("desired_changed", {"n": 1})
    assert sub.queue.empty()
    sub.close()


@pytest.mark.services
def test_redis_bus_reaches_another_replica(redis_url: str) -> None:
    channel = f"mf:test:{uuid.uuid4().hex}"
    api_side, worker_side = RedisEventBus(redis_url, channel), RedisEventBus(redis_url, channel)
    got: list[tuple[str, dict[str, Any]]] = []
    worker_side.subscribe(lambda k, p: got.append((k, p)))
    try:
        api_side.publish("balance_changed", {"account_id": 42})
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
        assert got == [("balance_changed", {"account_id": 42})]
    finally:
        api_side.close()
        worker_side.close()
