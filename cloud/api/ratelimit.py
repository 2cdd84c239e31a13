"""Login throttling: failed logins slow down further attempts, per username and per client address.

Who attacks the login: anyone who can reach the API, guessing passwords of one user from many
addresses, or of many users from one address, or locking a user out on purpose. So:

- Two counters per attempt, ``user:<username>`` and ``addr:<address>``; each keeps the failures of
  the last ``window_s`` (a sliding window: old failures age out, nothing to reset). After ``free``
  failures in the window the next attempt on that key must wait 1 s after the last failure, then 2,
  4, … up to ``max_delay_s``. A blocked attempt is answered 429 with ``Retry-After`` and is not
  counted, so waiting it out always works.
- The username key is taken from what was *typed*, not from the user row: an unknown username is
  throttled exactly like a known one, so neither 401 nor 429 tells which usernames exist.
- Only failures count. An attempt is written down *before* the password is checked and removed when
  it succeeds, so a burst of parallel guesses sees itself: at most ``free`` of them get through.
  (A login that fails for another reason, e.g. the database is down, stays counted: the safe side.)
- Nothing here touches the user row: a throttled user's live sessions keep working (the old lock-out
  revoked them, which let anyone log any user out forever with five wrong passwords).

State lives in Redis when ``MF_REDIS_URL`` is set (shared by API replicas, a sorted set per key) and in
process otherwise; both implement :class:`AttemptStore` and share :class:`LoginThrottle`'s rules. When
Redis cannot be reached, logins are refused (:class:`ThrottleUnavailable`, a 503) rather than let
through uncounted.
Which address a request comes from is decided before this module (see :mod:`cloud.api.app` and
``MF_TRUSTED_PROXIES``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from cloud.services.errors import ServiceError

__all__ = [
    "MAX_ENTRIES",
    "AttemptStore",
    "LoginAttempt",
    "LoginThrottle",
    "MemoryAttemptStore",
    "RedisAttemptStore",
    "ThrottleRule",
    "ThrottleUnavailable",
    "address_key",
    "make_login_throttle",
    "username_key",
]

log = logging.getLogger(__name__)

Entry = tuple[str, float]
"""``(attempt id, unix time)`` of one failed (or still being checked) attempt."""
MAX_ENTRIES = 1000
"""A key's entries are bounded by the throttle itself (blocked attempts are not kept, so a window
holds ``free`` plus about ``window_s / max_delay_s`` failures); this cap only guards memory against a
configuration that makes that large. Trimming happens before an attempt is added, so removing a
refused attempt never shortens the real history."""


class ThrottleUnavailable(ServiceError):
    """The shared attempt store (Redis) did not answer: refuse the login, do not skip the count."""


class AttemptStore(Protocol):
    def add(self, key: str, member: str, at: float, *, window_s: int) -> list[Entry]:
        """Record ``member`` at ``at``; return the key's entries within ``window_s``, oldest first."""

    def remove(self, key: str, member: str) -> None:
        """Forget one attempt (it succeeded, or it was refused without being checked)."""


@dataclass(frozen=True)
class ThrottleRule:
    free: int
    """Failures within the window before any delay."""
    window_s: int
    max_delay_s: int

    def delay_s(self, failures: int) -> float:
        """How long after the last failure an attempt must wait, with ``failures`` before it."""
        if failures < self.free:
            return 0.0
        return float(min(self.max_delay_s, 2 ** min(failures - self.free, 62)))

    def wait_s(self, entries: list[Entry], member: str, at: float) -> float:
        """Seconds the attempt ``member`` (made at ``at``) must still wait; 0 if it may go on.

        Every other entry in the window counts as before it, including attempts still being checked
        by other requests or replicas (even with a clock slightly ahead): a parallel burst past
        ``free`` is refused as a whole rather than let through.
        """
        others = [when for entry_member, when in entries if entry_member != member]
        if not others:
            return 0.0
        return max(0.0, max(others) + self.delay_s(len(others)) - at)


def username_key(username: str) -> str:
    """Hashed: the store never holds the (attacker-chosen, possibly personal) text itself."""
    folded = username.strip().casefold().encode("utf-8", "replace")
    return "user:" + hashlib.sha256(folded).hexdigest()[:32]


def address_key(host: str) -> str:
    """An IPv6 client is counted by its /64 (one subscriber usually has the whole /64)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "addr:" + host[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return "addr:" + str(address.ipv4_mapped)
        return "addr:" + str(ipaddress.IPv6Network((address, 64), strict=False))
    return "addr:" + str(address)


@dataclass(frozen=True)
class LoginAttempt:
    member: str
    keys: tuple[str, ...]
    retry_after_s: int | None
    """None: go on and check the password; else refused, answer 429 with this ``Retry-After``."""


class LoginThrottle:
    def __init__(self, store: AttemptStore, *, user: ThrottleRule, address: ThrottleRule) -> None:
        self.store, self.user_rule, self.address_rule = store, user, address

    def begin(self, username: str, address: str, now: datetime) -> LoginAttempt:
        """Write the attempt down (as a failure until :meth:`succeeded`) and say whether it may go on."""
        at = now.timestamp()
        member = f"{at:.6f}:{uuid.uuid4().hex}"
        rules = ((username_key(username), self.user_rule), (address_key(address), self.address_rule))
        wait = 0.0
        for key, rule in rules:
            entries = self.store.add(key, member, at, window_s=rule.window_s)
            wait = max(wait, rule.wait_s(entries, member, at))
        keys = tuple(key for key, _ in rules)
        if wait <= 0:
            return LoginAttempt(member, keys, None)
        self._forget(member, keys)  # refused unchecked: does not count
        return LoginAttempt(member, keys, max(1, math.ceil(wait)))

    def succeeded(self, attempt: LoginAttempt) -> None:
        try:
            self._forget(attempt.member, attempt.keys)
        except ThrottleUnavailable as exc:  # the login stands; its entry ages out as a failure
            log.warning("could not clear a successful login attempt: %s", exc)

    def _forget(self, member: str, keys: tuple[str, ...]) -> None:
        for key in keys:
            self.store.remove(key, member)


class MemoryAttemptStore:
    """One process's attempts; at most ``max_keys`` keys (least recently failed ones are dropped)."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self._keys: OrderedDict[str, list[Entry]] = OrderedDict()
        self._lock = threading.Lock()
        self._max_keys = max_keys

    def add(self, key: str, member: str, at: float, *, window_s: int) -> list[Entry]:
        with self._lock:
            entries = [e for e in self._keys.pop(key, []) if e[1] > at - window_s][-MAX_ENTRIES:]
            entries.append((member, at))
            entries.sort(key=lambda e: (e[1], e[0]))
            self._keys[key] = entries
            while len(self._keys) > self._max_keys:
                self._keys.popitem(last=False)
            return list(entries)

    def remove(self, key: str, member: str) -> None:
        with self._lock:
            entries = self._keys.get(key)
            if entries is not None:
                entries[:] = [e for e in entries if e[0] != member]


class RedisAttemptStore:
    """A sorted set per key (member = attempt id, score = time), shared by every API replica."""

    def __init__(self, url: str, prefix: str = "mf:login:") -> None:
        import redis

        self._redis: Any = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._errors: tuple[type[Exception], ...] = (redis.RedisError, OSError)
        self.prefix = prefix

    def add(self, key: str, member: str, at: float, *, window_s: int) -> list[Entry]:
        try:
            return self._add(key, member, at, window_s)
        except self._errors as exc:
            log.exception("login throttle: Redis does not answer")
            raise ThrottleUnavailable("login is unavailable: the attempt store does not answer") from exc

    def _add(self, key: str, member: str, at: float, window_s: int) -> list[Entry]:
        name = self.prefix + key
        pipe = self._redis.pipeline(transaction=True)  # MULTI/EXEC: replicas interleave whole steps
        pipe.zremrangebyscore(name, "-inf", at - window_s)
        pipe.zremrangebyrank(name, 0, -(MAX_ENTRIES + 1))
        pipe.zadd(name, {member: at})
        pipe.expire(name, window_s)
        pipe.zrange(name, 0, -1, withscores=True)
        rows = pipe.execute()[-1]
        return [(m.decode() if isinstance(m, bytes) else str(m), float(score)) for m, score in rows]

    def remove(self, key: str, member: str) -> None:
        try:
            self._redis.zrem(self.prefix + key, member)
        except self._errors as exc:
            raise ThrottleUnavailable("the attempt store does not answer") from exc


def make_login_throttle(
    redis_url: str | None,
    *,
    user_free: int,
    address_free: int,
    window_s: int,
    max_delay_s: int,
) -> LoginThrottle:
    store: AttemptStore = RedisAttemptStore(redis_url) if redis_url else MemoryAttemptStore()
    return LoginThrottle(
        store,
        user=ThrottleRule(user_free, window_s, max_delay_s),
        address=ThrottleRule(address_free, window_s, max_delay_s),
    )
