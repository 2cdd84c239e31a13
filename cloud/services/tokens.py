"""Bearer tokens: ``<base64url(claims JSON)>.<base64url(HMAC-SHA256(secret, claims))>``.

Stateless (any replica verifies with MF_SECRET_KEY), expiring, and revocable per user: the claims
carry the user's ``token_version``, bumped on lock-out or password change, and the API checks it
against the row on every request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cloud.services.errors import AuthError

__all__ = ["TokenClaims", "issue_token", "read_token"]


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


def read_token(secret: bytes, token: str, now: datetime) -> TokenClaims:
    body, dot, sig = token.partition(".")
    if not dot or not body or not sig:
        raise AuthError("malformed token")
    if not hmac.compare_digest(_sign(secret, body), sig):
        raise AuthError("token signature does not verify")
    try:
        claims = json.loads(_unb64(body))
        user_id, version, exp = int(claims["sub"]), int(claims["tv"]), int(claims["exp"])
    except (ValueError, KeyError, TypeError) as exc:
        raise AuthError("malformed token claims") from exc
    expires = datetime.fromtimestamp(exp, UTC)
    if expires <= now:
        raise AuthError("token expired")
    return TokenClaims(user_id=user_id, token_version=version, expires_at=expires)
