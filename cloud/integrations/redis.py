"""Locks and leader election with a TTL and a fencing token: Redis across replicas, in-process alone.

A lock is ``SET key token NX PX ttl``; renewing and releasing check the token first (a Lua script), so a
holder that stalled past its TTL cannot extend or free a lock somebody else now holds. Each successful
acquisition also takes a **fencing token** (``INCR key:fence``): a strictly increasing number that a
holder passes along with the work it does, so work started by a deposed leader can be recognised.
Meterflow's jobs do not rely on the lock for correctness (their ``job_run`` row is UNIQUE per period,
written in the same database transaction as the work); the lock only keeps replicas from racing.

:class:`LeaderElector` keeps trying to hold one lock and renews it every ``ttl/3``; ``is_leader`` turns
false as soon as a renewal fails or the local deadline passes, before the key can expire on Redis.

With no ``MF_REDIS_URL``, :class:`LocalLock` gives the same interface inside one process.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any, ClassVar, Protocol

from cloud.domain.errors import CloudError

__all__ = [
    "LeaderElector",
    "LocalLock",
    "Lock",
    "LockError",
    "RedisLock",
    "make_lock",
]

log = logging.getLogger(__name__)

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


class LockError(CloudError):
    """The lock backend is unreachable or misbehaved."""


class Lock(Protocol):
    name: str
    fencing_token: int | None

    def acquire(self) -> bool: ...

    def renew(self) -> bool: ...

    def release(self) -> None: ...


class RedisLock:
    """One named lock on Redis with a TTL and a fencing token; not re-entrant."""

    def __init__(self, client: Any, name: str, ttl_s: float = 15.0) -> None:
        import redis

        self._errors: type[Exception] = redis.RedisError
        self._client = client
        self.name = name
        self._key = f"mf:lock:{name}"
        self._ttl_ms = int(ttl_s * 1000)
        self._token = uuid.uuid4().hex
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self.fencing_token: int | None = None

    @classmethod
    def from_url(cls, url: str, name: str, ttl_s: float = 15.0) -> RedisLock:
        import redis

        return cls(redis.Redis.from_url(url, socket_timeout=5), name, ttl_s)

    def acquire(self) -> bool:
        try:
            if not self._client.set(self._key, self._token, nx=True, px=self._ttl_ms):
                return False
            self.fencing_token = int(self._client.incr(f"{self._key}:fence"))
        except self._errors as exc:
            raise LockError(f"lock {self.name}: {exc}") from exc
        return True

    def renew(self) -> bool:
        try:
            return bool(self._renew(keys=[self._key], args=[self._token, self._ttl_ms]))
        except self._errors as exc:
            raise LockError(f"lock {self.name}: {exc}") from exc

    def release(self) -> None:
        try:
            self._release(keys=[self._key], args=[self._token])
        except self._errors as exc:
            raise LockError(f"lock {self.name}: {exc}") from exc
        finally:
            self.fencing_token = None


class LocalLock:
    """The in-process equivalent: one holder per name in this process, TTL honoured the same way."""

    _registry: ClassVar[dict[str, tuple[str, float]]] = {}
    _fences: ClassVar[dict[str, int]] = {}
    _guard = threading.Lock()

    def __init__(self, name: str, ttl_s: float = 15.0) -> None:
        self.name = name
        self._ttl = ttl_s
        self._token = uuid.uuid4().hex
        self.fencing_token: int | None = None

    def acquire(self) -> bool:
        with self._guard:
            held = self._registry.get(self.name)
            if held is not None and held[1] > time.monotonic() and held[0] != self._token:
                return False
            self._registry[self.name] = (self._token, time.monotonic() + self._ttl)
            self._fences[self.name] = self._fences.get(self.name, 0) + 1
            self.fencing_token = self._fences[self.name]
            return True

    def renew(self) -> bool:
        with self._guard:
            held = self._registry.get(self.name)
            if held is None or held[0] != self._token or held[1] <= time.monotonic():
                return False
            self._registry[self.name] = (self._token, time.monotonic() + self._ttl)
            return True

    def release(self) -> None:
        with self._guard:
            held = self._registry.get(self.name)
            if held is not None and held[0] == self._token:
                del self._registry[self.name]
            self.fencing_token = None


def make_lock(redis_url: str | None, name: str, ttl_s: float = 15.0) -> Lock:
    return RedisLock.from_url(redis_url, name, ttl_s) if redis_url else LocalLock(name, ttl_s)


class LeaderElector:
    """Hold ``lock`` as long as possible from a background thread; ask :attr:`is_leader` before work."""

    def __init__(self, lock: Lock, ttl_s: float = 15.0) -> None:
        self._lock = lock
        self._ttl = ttl_s
        self._deadline = 0.0
        self._leader = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def is_leader(self) -> bool:
        return self._leader and time.monotonic() < self._deadline

    @property
    def fencing_token(self) -> int | None:
        return self._lock.fencing_token if self.is_leader else None

    def step(self) -> bool:
        """One election round (the thread calls this every ``ttl/3``); returns leadership."""
        started = time.monotonic()
        try:
            ok = self._lock.renew() if self._leader else self._lock.acquire()
        except LockError:
            log.warning("leader lock %s unreachable; stepping down", self._lock.name)
            ok = False
        if ok and not self._leader:
            log.info("became leader for %s (fencing token %s)", self._lock.name, self._lock.fencing_token)
        elif self._leader and not ok:
            log.warning("lost leadership of %s", self._lock.name)
        self._leader = ok
        # Step down locally a little before the key can expire remotely.
        self._deadline = started + self._ttl * 0.8 if ok else 0.0
        return ok

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"mf-leader-{self._lock.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step()
            self._stop.wait(self._ttl / 3)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._leader:
            try:
                self._lock.release()
            except LockError:
                log.warning("could not release leader lock %s (it will expire)", self._lock.name)
        self._leader = False
