"""Gateway signing keys: rotation with an overlap window, the key to sign down with, and the per-gateway
key cache the ingest verifies every message with.

Rules (docs/security.md, "Signed messages and gateway keys"):

- a gateway's keys are the rows of ``gateway_key``; a key is valid until its ``not_after``;
- :func:`rotate` adds the next key (``k2``, ``k3``…) and gives every older valid key the overlap
  asked for (bounded: :data:`MIN_OVERLAP` – :data:`MAX_OVERLAP`, default 24 h); the new secret is
  returned once and never again (listings show ids and dates only);
- up messages are accepted under any valid key (:class:`KeyCache`); the first message sealed with a
  key marks it ``seen_at``;
- down messages (commands, configs) are signed with :func:`down_key`: the newest valid key the
  gateway has been seen using, else its oldest valid key — so a gateway that has not installed the
  rotated key yet keeps working during the overlap, and one that has gets the new key at once;
- :func:`end_overlap` retires every key but the newest now, once the gateway has been seen using the
  newest (``force`` skips that check, at the price of cutting off a gateway that has not switched).

Every change publishes ``gateway_keys_changed`` after commit: the ingest's caches drop the gateway
and the reconciler re-signs its retained config.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.events import GATEWAY_KEYS_CHANGED
from cloud.models import Gateway, GatewayKey
from cloud.services.audit import Actor, AuditAction, record
from cloud.services.errors import Conflict
from cloud.services.hierarchy import get_gateway

__all__ = [
    "DEFAULT_OVERLAP",
    "MAX_OVERLAP",
    "MIN_OVERLAP",
    "KeyCache",
    "NoKey",
    "down_key",
    "end_overlap",
    "list_keys",
    "mark_seen",
    "rotate",
]

log = logging.getLogger(__name__)

DEFAULT_OVERLAP = timedelta(hours=24)
MIN_OVERLAP = timedelta(minutes=5)
MAX_OVERLAP = timedelta(days=7)
_KID_NUMBER = re.compile(r"^k(\d{1,9})$")


class NoKey(Conflict):
    """The gateway has no valid key: nothing can be signed for it."""


def _valid(key: GatewayKey, now: datetime) -> bool:
    return key.not_after is None or now < key.not_after


def _keys(session: Session, gateway_id: int, *, lock: bool = False) -> list[GatewayKey]:
    query = select(GatewayKey).where(col(GatewayKey.gateway_id) == gateway_id).order_by(col(GatewayKey.id))
    if lock:
        query = query.with_for_update()
    return list(session.scalars(query))


def list_keys(session: Session, actor: Actor, gateway_id: int) -> list[GatewayKey]:
    """The gateway's keys, oldest first (callers show ids and dates, never ``secret``)."""
    get_gateway(session, actor, gateway_id)
    return _keys(session, gateway_id)


def _next_kid(keys: Sequence[GatewayKey]) -> str:
    numbers = [int(m.group(1)) for k in keys if (m := _KID_NUMBER.match(k.kid))]
    return f"k{max(numbers, default=0) + 1}"


def rotate(
    session: Session, actor: Actor, gateway_id: int, now: datetime, *, overlap: timedelta = DEFAULT_OVERLAP
) -> tuple[GatewayKey, str]:
    """A new key for the gateway (and its secret, to show once); older valid keys retire at
    ``now + overlap`` (an earlier retirement already set is kept)."""
    if not MIN_OVERLAP <= overlap <= MAX_OVERLAP:
        raise Conflict(
            f"重叠期须在 5 分钟到 7 天之间 / the overlap must lie between {MIN_OVERLAP} and {MAX_OVERLAP}"
        )
    gateway = get_gateway(session, actor, gateway_id)
    # the gateway row, locked: two rotations at once must not both pick the same next kid
    session.scalars(select(Gateway).where(col(Gateway.id) == gateway_id).with_for_update()).one()
    keys = _keys(session, gateway_id, lock=True)
    retire = now + overlap
    for old in keys:
        if _valid(old, now) and (old.not_after is None or old.not_after > retire):
            old.not_after = retire
    secret = secrets.token_hex(32)
    key = GatewayKey(gateway_id=gateway_id, kid=_next_kid(keys), secret=secret, created_at=now)
    session.add(key)
    session.flush()
    record(
        session,
        actor,
        AuditAction.GATEWAY_KEY_ROTATED,
        org_id=gateway.org_id,
        target_type="gateway",
        target_id=gateway_id,
        detail={
            "kid": key.kid,
            "overlap_s": int(overlap.total_seconds()),
            "old_keys_retire_at": retire.isoformat(),
        },
        at=now,
    )
    log.info("gateway %s: new signing key %s; older keys retire at %s", gateway.device_id, key.kid, retire)
    return key, secret


def end_overlap(
    session: Session, actor: Actor, gateway_id: int, now: datetime, *, force: bool = False
) -> list[GatewayKey]:
    """Retire every key but the newest now. Refused (409) while the gateway has not been seen using
    the newest key, unless ``force``: ending the overlap then would cut the gateway off."""
    gateway = get_gateway(session, actor, gateway_id)
    keys = _keys(session, gateway_id, lock=True)
    if not keys:
        raise NoKey(f"网关 {gateway.device_id} 没有签名密钥 / gateway {gateway.device_id} has no signing key")
    newest = keys[-1]
    if newest.seen_at is None and not force:
        raise Conflict(
            f"网关 {gateway.device_id} 尚未使用密钥 {newest.kid}，请先在网关上安装 / "
            f"gateway {gateway.device_id} has not used key {newest.kid} yet: install it on the gateway "
            "first (or force, which cuts the gateway off until it has)"
        )
    retired = []
    for old in keys[:-1]:
        if _valid(old, now):
            old.not_after = now
            retired.append(old.kid)
    record(
        session,
        actor,
        AuditAction.GATEWAY_KEY_OVERLAP_ENDED,
        org_id=gateway.org_id,
        target_type="gateway",
        target_id=gateway_id,
        detail={"retired": retired, "kept": newest.kid, "forced": force},
        at=now,
    )
    session.flush()
    return keys


def down_key(session: Session, gateway_id: int, now: datetime) -> tuple[str, bytes]:
    """``(kid, secret)`` to sign a command or config for the gateway with (see the module docstring)."""
    valid = [k for k in _keys(session, gateway_id) if _valid(k, now)]
    if not valid:
        raise NoKey(f"gateway {gateway_id} has no valid signing key")
    seen = [k for k in valid if k.seen_at is not None]
    key = seen[-1] if seen else valid[0]
    return key.kid, key.secret.encode()


def mark_seen(session: Session, gateway_id: int, kid: str, now: datetime) -> bool:
    """Record that the gateway sealed a message with ``kid`` (once per key); True if this was the first."""
    result = session.execute(
        update(GatewayKey)
        .where(
            col(GatewayKey.gateway_id) == gateway_id,
            col(GatewayKey.kid) == kid,
            col(GatewayKey.seen_at).is_(None),
        )
        .values(seen_at=now)
    )
    return bool(getattr(result, "rowcount", 0))


# -- the ingest's cache -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Key:
    secret: bytes = field(repr=False)
    not_after: datetime | None
    seen: bool


@dataclass(frozen=True, slots=True)
class _Entry:
    gateway_id: int | None  # None: no such gateway
    keys: dict[str, _Key]
    loaded: float


class KeyCache:
    """Each gateway's keys, by device id, for the ingest's hot path (thread-safe).

    An entry is reloaded after ``ttl_s``, when ``gateway_keys_changed`` names its gateway
    (:meth:`on_event`), and — at most every ``miss_s`` — when a message names a key or gateway the
    entry does not have (a rotation whose event was lost), so a flood of forgeries cannot turn into a
    flood of queries. At most ``max_entries`` gateways are held: topics naming made-up gateways are
    the first to go, so they cannot grow the cache without bound. Retirement is judged at each lookup
    from ``not_after``, never from the cache's age: a retired key is refused from its ``not_after`` on.
    """

    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        ttl_s: float = 30.0,
        miss_s: float = 2.0,
        max_entries: int = 20_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._factory = factory
        self._ttl = ttl_s
        self._miss = miss_s
        self._max = max_entries
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def __repr__(self) -> str:
        return f"KeyCache({len(self._entries)} gateways)"

    def key_for(self, device: str, kid: str, now: datetime) -> bytes | None:
        """The secret of the gateway's key ``kid`` if it is valid at ``now``."""
        entry = self._entry(device, kid)
        key = entry.keys.get(kid)
        if key is None or (key.not_after is not None and now >= key.not_after):
            return None
        return key.secret

    def gateway_id(self, device: str) -> int | None:
        """The gateway's row id, None when there is no such gateway."""
        return self._entry(device, None).gateway_id

    def seen(self, device: str, kid: str) -> bool:
        """Whether the gateway is known to have used ``kid`` already (no query)."""
        with self._lock:
            entry = self._entries.get(device)
        key = entry.keys.get(kid) if entry is not None else None
        return key is not None and key.seen

    def invalidate(self, gateway_id: int | None = None) -> None:
        """Drop the entry of ``gateway_id`` (every entry if None)."""
        with self._lock:
            if gateway_id is None:
                self._entries.clear()
                return
            for device in [d for d, e in self._entries.items() if e.gateway_id in (gateway_id, None)]:
                del self._entries[device]

    def on_event(self, kind: str, payload: dict[str, object]) -> None:
        """Event bus subscriber: ``gateway_keys_changed`` drops the gateway's entry."""
        if kind != GATEWAY_KEYS_CHANGED:
            return
        gateway_id = payload.get("gateway_id")
        self.invalidate(gateway_id if isinstance(gateway_id, int) else None)

    def _entry(self, device: str, kid: str | None) -> _Entry:
        now = self._monotonic()
        with self._lock:
            entry = self._entries.get(device)
        if entry is not None:
            age = now - entry.loaded
            missing = entry.gateway_id is None or (kid is not None and kid not in entry.keys)
            if age < self._ttl and not (missing and age >= self._miss):
                return entry
        entry = self._load(device, now)
        with self._lock:
            if device not in self._entries and len(self._entries) >= self._max:
                self._evict()
            self._entries[device] = entry
        return entry

    def _evict(self) -> None:
        """Full: drop the entries of unknown gateways (topics anyone can make up), else everything.
        Called with the lock held."""
        unknown = [d for d, e in self._entries.items() if e.gateway_id is None]
        for device in unknown:
            del self._entries[device]
        if len(self._entries) >= self._max:
            self._entries.clear()

    def _load(self, device: str, now: float) -> _Entry:
        with self._factory() as session:
            rows = session.execute(
                select(
                    col(Gateway.id),
                    col(GatewayKey.kid),
                    col(GatewayKey.secret),
                    col(GatewayKey.not_after),
                    col(GatewayKey.seen_at),
                )
                .select_from(Gateway)
                .outerjoin(GatewayKey, col(GatewayKey.gateway_id) == col(Gateway.id))
                .where(col(Gateway.device_id) == device)
            ).all()
        if not rows:
            return _Entry(None, {}, now)
        keys = {
            str(kid): _Key(str(secret).encode(), not_after, seen_at is not None)
            for _gid, kid, secret, not_after, seen_at in rows
            if kid is not None
        }
        gateway_id = rows[0][0]
        assert gateway_id is not None  # the gateway's own id, from the row that matched
        return _Entry(int(gateway_id), keys, now)
