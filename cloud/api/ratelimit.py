"""Login rate limit per client address: fixed windows, in-process or in Redis (shared by replicas)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["MemoryRateLimiter", "RateLimiter", "RedisRateLimiter", "make_rate_limiter"]


class RateLimiter(Protocol):
    def hit(self, key: str) -> int | None:
        """Count one attempt; None if allowed, else seconds until the window ends."""


class MemoryRateLimiter:
    def __init__(self, limit: int, window_s: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window_s, self._clock = limit, window_s, clock
        self._hits: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> int | None:
        now = self._clock()
        with self._lock:
            if len(self._hits) > 10_000:  # forget expired windows; bounded memory under a spray
                self._hits = {k: v for k, v in self._hits.items() if v[0] > now}
            ends, count = self._hits.get(key, (now + self.window_s, 0))
            if ends <= now:
                ends, count = now + self.window_s, 0
            count += 1
            self._hits[key] = (ends, count)
        return None if count <= self.limit else max(1, int(ends - now))


class RedisRateLimiter:
    def __init__(self, url: str, limit: int, window_s: int, prefix: str = "mf:ratelimit:login:") -> None:
        import redis

        self._redis = redis.Redis.from_url(url)
        self.limit, self.window_s, self.prefix = limit, window_s, prefix

    def hit(self, key: str) -> int | None:
        name = self.prefix + key
        pipe = self._redis.pipeline()
        pipe.incr(name)
        pipe.expire(name, self.window_s, nx=True)
        pipe.ttl(name)
        count, _, ttl = pipe.execute()
        return None if int(count) <= self.limit else max(1, int(ttl))


def make_rate_limiter(redis_url: str | None, limit: int, window_s: int) -> RateLimiter:
    if redis_url:
        return RedisRateLimiter(redis_url, limit, window_s)
    return MemoryRateLimiter(limit, window_s)
