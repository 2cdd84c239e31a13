"""User administration (admins): create users of their organisation with a role, deactivate and
reactivate them, reset a password. Every change is audited; deactivating or resetting ends the user's
live tokens."""

from __future__ import annotations

from fastapi import APIRouter, Response

from cloud.api.access import Caller
from cloud.api.deps import Db, Now, Paging, PathId, page_response
from cloud.api.schemas import PasswordResetIn, UserIn, UserOut, UserStatusIn
from cloud.services import users
from cloud.services.errors import NotFound

router = APIRouter(tags=["users"])


@router.get("/users", response_model=list[UserOut])
def list_users(p: Caller, uow: Db, page: Paging, response: Response) -> list[UserOut]:
    rows = users.list_users(uow.session, p.actor, page=page)
    return [UserOut.model_validate(u) for u in page_response(response, rows, page, lambda u: (u.id,))]


@router.post("/users", response_model=UserOut, status_code=201)
def create_user(body: UserIn, p: Caller, uow: Db) -> UserOut:
    """An organisation's admin creates users in that organisation; a platform admin names ``org_id``."""
    org_id = body.org_id if p.org_id is None else p.org_id
    if p.org_id is not None and body.org_id not in (None, p.org_id):
        raise NotFound(f"organisation {body.org_id} not found")
    user = users.create_user(
        uow.session,
        username=body.username,
        password=body.password,
        role=body.role,
        org_id=org_id,
        tenant_id=body.tenant_id,
        display_name=body.display_name,
        actor=p.actor,
    )
    uow.commit()
    return UserOut.model_validate(user)


@router.post("/users/{user_id}/deactivate", response_model=UserOut)
def deactivate(user_id: PathId, body: UserStatusIn, p: Caller, uow: Db, at: Now) -> UserOut:
    """No more logins; the user's live tokens stop working at once."""
    user = users.set_active(uow.session, p.actor, user_id, active=False, reason=body.reason, now=at)
    uow.commit()
    return UserOut.model_validate(user)


@router.post("/users/{user_id}/reactivate", response_model=UserOut)
def reactivate(user_id: PathId, body: UserStatusIn, p: Caller, uow: Db, at: Now) -> UserOut:
    user = users.set_active(uow.session, p.actor, user_id, active=True, reason=body.reason, now=at)
    uow.commit()
    return UserOut.model_validate(user)


@router.post("/users/{user_id}/password", response_model=UserOut)
def reset_password(user_id: PathId, body: PasswordResetIn, p: Caller, uow: Db, at: Now) -> UserOut:
    """A new password chosen by the admin (give it to the user out of band); live tokens stop working."""
    user = users.reset_password(uow.session, p.actor, user_id, body.password, now=at)
    uow.commit()
    return UserOut.model_validate(user)
