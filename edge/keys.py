"""The gateway's signing keys, by key id: the one it was commissioned with and those installed since.

Why several keys: keys rotate (the cloud's ``POST /gateways/{id}/keys``, then ``meterflow edge key
install`` on the gateway), and for an overlap window both sides hold the old and the new key, so a
gateway that has not got the new key yet keeps working and one that has does not have to wait for the
cloud. The rules the gateway follows (docs/security.md, "Signed messages and gateway keys"):

* everything it sends up is sealed with the newest key it holds that is not retired;
* a down message (command, config) is verified against the key named by its ``kid``, if the gateway
  holds it and it is not retired at that moment;
* a key is retired from its ``not_after`` on: installing a key gives every older key the overlap the
  cloud was told (default 24 h), ``meterflow edge key retire`` ends it early.

Where keys live:

* ``edge.toml``: ``gateway.signing_key`` (or ``signing_key_file``) under ``gateway.signing_kid``
  (default ``k1``), the commissioning key;
* ``keys.json`` in the data dir, mode 0600, rewritten atomically by :func:`install_key` and
  :func:`retire_key`: the keys installed since, oldest first, and the ``not_after`` of any key.

:meth:`KeyRing.reload` re-reads ``keys.json`` when it changed; the daemon calls it every few seconds
and on SIGHUP, so a key installed on a running gateway is in use without a restart. A ``keys.json``
that cannot be read or parsed is logged and the keys already loaded stay in force (a half-edited
file must not take a gateway off the air).

Secrets never appear in a repr, a log line or an exception message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from edge.config import EdgeConfig
from edge.errors import ConfigError
from protocol.contract import is_key_id

__all__ = [
    "DEFAULT_OVERLAP",
    "KEY_FILE",
    "MAX_OVERLAP",
    "MIN_SECRET_LENGTH",
    "HeldKey",
    "KeyRing",
    "install_key",
    "parse_overlap",
    "retire_key",
]

log = logging.getLogger(__name__)

KEY_FILE = "keys.json"
MIN_SECRET_LENGTH = 32
"""The cloud issues 64 hex characters; anything much shorter is a typo or a made-up key."""
MAX_OVERLAP = timedelta(days=7)
"""The cloud's bound on an overlap, so the gateway never keeps an old key longer than the cloud does."""
DEFAULT_OVERLAP = timedelta(hours=24)

_KID = r"^[A-Za-z0-9_.\-]{1,32}$"


class _StoredKey(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    kid: Annotated[str, Meta(pattern=_KID)]
    secret: Annotated[str, Meta(min_length=MIN_SECRET_LENGTH, max_length=256, pattern=r"^\S+$")]
    installed_at: datetime

    def __repr__(self) -> str:
        return f"_StoredKey(kid={self.kid!r}, secret=***, installed_at={self.installed_at!r})"


class _KeyFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    v: Literal[1] = 1
    keys: list[_StoredKey] = []
    not_after: dict[Annotated[str, Meta(pattern=_KID)], datetime] = {}


_decoder = msgspec.json.Decoder(_KeyFile)
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class HeldKey:
    """One key the gateway holds; ``not_after`` None means it is not being retired."""

    kid: str
    secret: bytes = field(repr=False)
    source: str
    not_after: datetime | None = None

    def valid_at(self, now: datetime) -> bool:
        return self.not_after is None or now < self.not_after


def _now() -> datetime:
    return datetime.now(UTC)


class KeyRing:
    """The keys in force: the base key from edge.toml and ``keys.json`` (see the module docstring)."""

    def __init__(
        self,
        base: tuple[str, bytes] | None,
        path: Path | None = None,
        *,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        if base is not None and not is_key_id(base[0]):
            raise ConfigError(f"gateway.signing_kid: not a key id: {base[0]!r}")
        self._base = base if base is not None and base[1] else None
        self.path = path
        self._clock = clock
        self._stamp: tuple[int, int, int] | None = None
        self._keys: tuple[HeldKey, ...] = self._merge(_KeyFile())
        self.reload()

    def __repr__(self) -> str:
        return f"KeyRing({self.describe()})"

    @classmethod
    def for_config(cls, config: EdgeConfig, *, clock: Callable[[], datetime] = _now) -> KeyRing:
        secret = config.signing_key_bytes()
        base = (config.gateway.signing_kid, secret) if secret else None
        return cls(base, config.gateway.data_dir / KEY_FILE, clock=clock)

    # -- loading ---------------------------------------------------------------------------------
    def reload(self) -> bool:
        """Re-read ``keys.json`` if it changed since the last read; True when the keys changed."""
        if self.path is None:
            return False
        try:
            st = self.path.stat()
        except FileNotFoundError:
            if self._stamp is None:
                return False
            self._stamp = None
            return self._set(self._merge(_KeyFile()))
        except OSError as exc:
            log.error("cannot read %s: %s; keeping the keys in force", self.path, exc)  # noqa: TRY400
            return False
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        if st.st_mode & 0o077:
            mode = st.st_mode & 0o777
            log.warning("%s is readable by others (mode %o): setting it to 0600", self.path, mode)
            with contextlib.suppress(OSError):
                self.path.chmod(stat.S_IRUSR | stat.S_IWUSR)
        try:
            stored = _read(self.path)
        except ConfigError as exc:
            log.error("%s; keeping the keys in force", exc)  # noqa: TRY400
            return False
        return self._set(self._merge(stored))

    def _merge(self, stored: _KeyFile) -> tuple[HeldKey, ...]:
        keys: list[HeldKey] = []
        if self._base is not None:
            kid, secret = self._base
            keys.append(HeldKey(kid, secret, "edge.toml", stored.not_after.get(kid)))
        for entry in stored.keys:
            if any(k.kid == entry.kid for k in keys):
                log.warning("%s: key %s is held already; the first one is used", self.path, entry.kid)
                continue
            keys.append(HeldKey(entry.kid, entry.secret.encode(), KEY_FILE, stored.not_after.get(entry.kid)))
        return tuple(keys)

    def _set(self, keys: tuple[HeldKey, ...]) -> bool:
        changed = [(k.kid, k.not_after) for k in keys] != [(k.kid, k.not_after) for k in self._keys]
        changed = changed or any(a.secret != b.secret for a, b in zip(keys, self._keys, strict=False))
        self._keys = keys
        if changed:
            log.info("signing keys: %s", self.describe())
        return changed

    # -- use -------------------------------------------------------------------------------------
    @property
    def keys(self) -> tuple[HeldKey, ...]:
        return self._keys

    def signing(self) -> tuple[str, bytes]:
        """``(kid, secret)`` to seal with: the newest key not retired. ConfigError if there is none."""
        now = self._clock()
        for key in reversed(self._keys):
            if key.valid_at(now):
                return key.kid, key.secret
        raise ConfigError("no signing key in force: configure gateway.signing_key or install one")

    def key_for(self, kid: str) -> bytes | None:
        """The secret of ``kid`` if it is held and not retired now (to verify a down message)."""
        now = self._clock()
        for key in self._keys:
            if key.kid == kid and key.valid_at(now):
                return key.secret
        return None

    def any_key_for(self, kid: str) -> bytes | None:
        """The secret of ``kid``, retired or not: for the gateway's own stored state (autonomy.json),
        accepted under a key that was valid then; the signature guards the file against edits."""
        for key in self._keys:
            if key.kid == kid:
                return key.secret
        return None

    def describe(self) -> str:
        """Key ids and their retirement, for log lines: ``k1 (edge.toml, retires …), k2 (keys.json)``."""
        if not self._keys:
            return "none"
        parts = []
        for key in self._keys:
            until = f", retires {key.not_after.isoformat(timespec='seconds')}" if key.not_after else ""
            parts.append(f"{key.kid} ({key.source}{until})")
        return ", ".join(parts)


# -- the key store file -----------------------------------------------------------------------------


def _read(path: Path) -> _KeyFile:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return _KeyFile()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        # msgspec names the field and the rule, never the value: no secret reaches a log line
        raise ConfigError(f"{path}: not a valid key store: {exc}") from None


def _write(path: Path, stored: _KeyFile) -> None:
    """Atomically, mode 0600 from the first byte, fsynced (a power cut leaves the old or the new file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    try:
        os.fchmod(fd, stat.S_IRUSR | stat.S_IWUSR)
        os.write(fd, msgspec.json.format(_encoder.encode(stored), indent=2) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def install_key(
    path: Path,
    *,
    kid: str,
    secret: str,
    base_kid: str | None,
    overlap: timedelta = DEFAULT_OVERLAP,
    now: datetime | None = None,
) -> list[tuple[str, datetime | None]]:
    """Add ``kid`` to the key store; every key held before retires ``overlap`` from ``now``.

    ``base_kid`` is the id of edge.toml's key (it retires too). Refuses a kid held already, a secret
    that does not look like one the cloud issued, an overlap outside 0–7 days. Returns each key id
    held afterwards with its ``not_after``.
    """
    now = now or _now()
    if not is_key_id(kid):
        raise ConfigError(f"not a key id: {kid!r} (letters, digits, _ . -; at most 32)")
    secret = secret.strip()
    if len(secret) < MIN_SECRET_LENGTH or len(secret) > 256 or re.search(r"\s", secret):
        raise ConfigError(
            f"the secret must be {MIN_SECRET_LENGTH}–256 characters without spaces, "
            "as the cloud returned it when the key was rotated"
        )
    if not timedelta(0) <= overlap <= MAX_OVERLAP:
        raise ConfigError("the overlap must lie between 0 and 7 days")
    stored = _read(path)
    held = ([base_kid] if base_kid else []) + [k.kid for k in stored.keys]
    if kid in held:
        raise ConfigError(f"key {kid} is installed already")
    retire = now + overlap
    not_after = dict(stored.not_after)
    for old in held:
        current = not_after.get(old)
        not_after[old] = retire if current is None or current > retire else current
    keys = [*stored.keys, _StoredKey(kid=kid, secret=secret, installed_at=now)]
    _write(path, _KeyFile(keys=keys, not_after=not_after))
    return [(k, not_after.get(k)) for k in [*held, kid]]


def retire_key(path: Path, *, kid: str, base_kid: str | None, at: datetime | None = None) -> datetime:
    """End ``kid``'s overlap at ``at`` (default now); refuses to retire the newest key held."""
    at = at or _now()
    stored = _read(path)
    held = ([base_kid] if base_kid else []) + [k.kid for k in stored.keys]
    if kid not in held:
        raise ConfigError(f"key {kid} is not held (held: {', '.join(held) or 'none'})")
    if kid == held[-1]:
        raise ConfigError(f"key {kid} is the newest key: install its successor before retiring it")
    not_after = dict(stored.not_after)
    not_after[kid] = min(at, not_after.get(kid, at))
    _write(path, _KeyFile(keys=list(stored.keys), not_after=not_after))
    return not_after[kid]


_DURATION = re.compile(r"^(\d+)\s*([smhd]?)$")


def parse_overlap(text: str) -> timedelta:
    """``24h``, ``90m``, ``3600s``, ``2d`` or plain seconds."""
    match = _DURATION.match(text.strip().lower())
    if match is None:
        raise ConfigError(f"not a duration: {text!r} (say 24h, 90m, 3600s or 2d)")
    value, unit = int(match.group(1)), match.group(2) or "s"
    return timedelta(seconds=value * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit])
