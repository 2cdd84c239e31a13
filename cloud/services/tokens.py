"""Bearer tokens: ``<base64url(claims JSON)>.<base64url(HMAC-SHA256(secret, claims))>``.

Stateless (any replica verifies with MF_SECRET_KEY), expiring, and revocable per user: the claims
carry the user's ``token_version``, bumped on lock-out or password change, and the API checks it
against the row on every request.

Whatever arrives in the ``Authorization`` header is read defensively: an over-long or non-ASCII
token, claims that are not a JSON object of integers in range (an ``exp`` beyond year 9999 made
``datetime.fromtimestamp`` raise) are all a plain "malformed token" (401), never a server error.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cloud.services.errors import AuthError

__all__ = ["MAX_TOKEN_CHARS", "TokenClaims", "issue_token", "read_token"]

MAX_TOKEN_CHARS = 1024
"""Ours are about 120 characters; anything much longer is not one of ours."""
_MAX_ID = 2**31 - 1
_MAX_EXP = int(datetime(9999, 1, 1, tzinfo=UTC).timestamp())


@dataclass(frozen=True)
class TokenClaims:
    user_id: int
    token_version: int
    expires_at: datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, body: str) -> str:
    return _b64(hmac.new(secret, body.encode("ascii"), hashlib.sha256).digest())


def issue_token(
    secret: bytes, user_id: int, token_version: int, now: datetime, ttl_s: int
) -> tuple[str, datetime]:
    expires = now + timedelta(seconds=ttl_s)
    claims = {
        "sub": user_id,
        "tv": token_version,
        "exp": int(expires.timestamp()),
        "iat": int(now.timestamp()),
    }
    body = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    return f"{body}.{_sign(secret, body)}", expires


def _claim(claims: object, name: str, low: int, high: int) -> int:
    value = claims.get(name) if isinstance(claims, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise AuthError("malformed token claims")
    return value


def read_token(secret: bytes, token: str, now: datetime) -> TokenClaims:
    if len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise AuthError("malformed token")
    body, dot, sig = token.partition(".")
    if not dot or not body or not sig:
        raise AuthError("malformed token")
    if not hmac.compare_digest(_sign(secret, body).encode(), sig.encode()):
        raise AuthError("token signature does not verify")
    try:
        claims = json.loads(_unb64(body))
    except ValueError as exc:  # binascii.Error, UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise AuthError("malformed token claims") from exc
    user_id = _claim(claims, "sub", 1, _MAX_ID)
    version = _claim(claims, "tv", 0, _MAX_ID)
    exp = _claim(claims, "exp", 0, _MAX_EXP)
    expires = datetime.fromtimestamp(exp, UTC)
    if expires <= now:
        raise AuthError("token expired")
    return TokenClaims(user_id=user_id, token_version=version, expires_at=expires)
