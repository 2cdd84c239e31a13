"""Login (rate-limited per client address, lock-out per user) and "who am I"."""

from __future__ import annotations

from fastapi import APIRouter, Request

from cloud.api.access import Caller
from cloud.api.deps import Db, Now
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
    ip = request.client.host if request.client else "unknown"
    retry = request.app.state.login_limiter.hit(ip)
    if retry is not None:
        raise AuthError("too many login attempts from this address", retry_after_s=retry)
    try:
        user = users.authenticate(
            uow.session, body.username, body.password, at, request.app.state.login_policy, ip=ip
        )
    except AuthError:
        uow.commit()  # keep the failure count and the audit row
        raise
    uow.commit()
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
