"""Login (throttled per username and per client address, see :mod:`cloud.api.ratelimit`) and "who am I".

Every refusal looks the same whoever the username belongs to, or whether it exists: 401 "wrong
username or password" after the same password-hashing work, or 429 with ``Retry-After`` from the
throttle, which is keyed by the typed username and never reads the user row.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from cloud.api.access import Caller
from cloud.api.deps import Db, Now
from cloud.api.ratelimit import LoginThrottle
from cloud.api.schemas import LoginIn, MeOut, TokenOut
from cloud.services import users
from cloud.services.errors import AuthError
from cloud.services.tokens import issue_token

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post("/login", response_model=TokenOut, summary="Exchange username and password for a bearer token")
def login(
    body: LoginIn,
    request: Request,
    uow: Db,
    at: Now,
) -> TokenOut:
    ip = request.client.host if request.client else "unknown"  # the proxy's client, if trusted
    throttle: LoginThrottle = request.app.state.login_throttle
    attempt = throttle.begin(body.username, ip, at)
    if attempt.retry_after_s is not None:
        raise AuthError("too many failed logins; try again later", retry_after_s=attempt.retry_after_s)
    try:
        user = users.authenticate(uow.session, body.username, body.password, at, ip=ip)
    except AuthError:
        uow.commit()  # keep the audit row; the attempt stays counted as a failure
        raise
    uow.commit()
    throttle.succeeded(attempt)
    settings = request.app.state.settings
    token, expires = issue_token(
        request.app.state.secret, user.id or 0, user.token_version, at, settings.token_ttl_s
    )
    return TokenOut(access_token=token, expires_at=expires)


@router.get("/me", response_model=MeOut)
def me(principal: Caller) -> MeOut:
    return MeOut(
        id=principal.user_id,
        username=principal.username,
        role=principal.role,
        org_id=principal.org_id,
        tenant_id=principal.tenant_id,
    )
