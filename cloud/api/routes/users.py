"""User administration (admins): create users of their organisation with a role."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from cloud.api.deps import Paging, Principal, Uow, get_uow, page_response, require
from cloud.api.schemas import UserIn, UserOut
from cloud.services import users
from cloud.services.errors import NotFound

router = APIRouter(tags=["users"])

Admin = Annotated[Principal, require()]
Db = Annotated[Uow, Depends(get_uow)]


@router.get("/users", response_model=list[UserOut])
def list_users(p: Admin, uow: Db, page: Paging, response: Response) -> list[UserOut]:
    rows = users.list_users(uow.session, p.actor, page=page)
    return [UserOut.model_validate(u) for u in page_response(response, rows, page, lambda u: (u.id,))]


@router.post("/users", response_model=UserOut, status_code=201)
def create_user(body: UserIn, p: Admin, uow: Db) -> UserOut:
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
