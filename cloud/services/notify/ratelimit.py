"""Per-channel send rate limits: a fixed one-second window, in Redis when configured (shared by every
replica, so N replicas together stay under the vendor's quota) and in-process otherwise."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

__all__ = ["LocalRateLimiter", "RateLimiter", "RedisRateLimiter", "make_rate_limiter"]


class RateLimiter(Protocol):
    def allow(self, channel: str) -> bool: ...


class LocalRateLimiter:
    def __init__(self, per_second: Mapping[str, int]) -> None:
        self._limits = dict(per_second)
        self._window: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def allow(self, channel: str) -> bool:
        limit = self._limits.get(channel)
        if limit is None:
            return True
        second = int(time.time())
        with self._lock:
            window, used = self._window.get(channel, (second, 0))
            if window != second:
                window, used = second, 0
            if used >= limit:
                return False
            self._window[channel] = (window, used + 1)
        return True


class RedisRateLimiter:
    def __init__(self, client: Any, per_second: Mapping[str, int], prefix: str = "mf:notify:rate") -> None:
        self._redis = client
        self._limits = dict(per_second)
        self._prefix = prefix

    def allow(self, channel: str) -> bool:
        limit = self._limits.get(channel)
        if limit is None:
            return True
        key = f"{self._prefix}:{channel}:{int(time.time())}"
        pipe = self._redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, 2)
        used, _ = pipe.execute()
        return int(used) <= limit


def make_rate_limiter(redis_url: str | None, per_second: Mapping[str, int]) -> RateLimiter:
    if redis_url:
        import redis

        return RedisRateLimiter(redis.Redis.from_url(redis_url), per_second)
    return LocalRateLimiter(per_second)
