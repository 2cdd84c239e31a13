"""My notices (我的通知): a member of staff's own phone, official-account openid, language and the
manager notices they want — ``PUT /auth/me/notify-contact`` in a form, with the same request model
(:class:`cloud.api.routes.notify.StaffContactIn`) and service
(:func:`cloud.services.notify.config.set_staff_contact`, audited). Nobody is sent a manager notice
until they opt in here or through the API; a refused value is shown next to its field (422) and
nothing is written."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from starlette.datastructures import FormData

from cloud.api.deps import Db, Now
from cloud.api.routes.notify import StaffContactIn
from cloud.console import guard, session
from cloud.console.settings import FormErrors, _checked
from cloud.console.web import ConsoleRoute, Staff, render
from cloud.domain.errors import DomainError
from cloud.services.notify import config as notify_config

__all__ = ["MANAGER_KINDS", "router"]

log = logging.getLogger(__name__)
router = APIRouter(route_class=ConsoleRoute)

_GET = ("GET", "/auth/me/notify-contact")
_PUT = ("PUT", "/auth/me/notify-contact")
MANAGER_KINDS = ("gateway_offline", "holds_waiting", "topup_failed")
"""The manager notices one can opt in to (``ManagerKind`` of the API)."""


async def _posted(request: Request) -> FormData:
    return await request.form()


Posted = Annotated[FormData, Depends(_posted)]


def _current(uow: Db, p: Any) -> dict[str, Any]:
    row = notify_config.staff_contact(uow.session, p.actor, p.user_id) if p.org_id is not None else None
    if row is None:
        return {"phone": "", "wechat_openid": "", "lang": "zh", "notices": []}
    return {
        "phone": row.phone,
        "wechat_openid": row.official_openid,
        "lang": row.lang,
        "notices": list(row.notices or []),
    }


@router.get("/my-notices", response_class=HTMLResponse)
def my_notices(request: Request, p: Staff, uow: Db, done: str = "") -> Response:
    guard.require(p, *_GET)
    return render(
        request, "my_notices.html", p, form=_current(uow, p), errors={}, kinds=MANAGER_KINDS,
        done=done == "saved", editable=guard.may(p, *_PUT) and p.org_id is not None,
    )  # fmt: skip


@router.post("/my-notices", response_class=HTMLResponse)
def save_my_notices(request: Request, p: Staff, uow: Db, at: Now, form: Posted) -> Response:
    session.check_csrf(request, str(form.get("csrf", ""))[:128])
    guard.require(p, *_PUT)
    typed: dict[str, Any] = {
        "phone": str(form.get("phone", ""))[:40].strip(),
        "wechat_openid": str(form.get("wechat_openid", ""))[:200].strip(),
        "lang": str(form.get("lang", "zh"))[:8],
        "notices": [str(v)[:40] for v in form.getlist("notices")][:10],
    }
    try:
        body = _checked(StaffContactIn, "contact", typed)
        try:
            notify_config.set_staff_contact(
                uow.session, p.actor, at, user_id=p.user_id, phone=body.phone,
                official_openid=body.wechat_openid, lang=body.lang, notices=list(body.notices),
            )  # fmt: skip
        except DomainError as exc:
            raise FormErrors("contact", {"phone" if "phone" in str(exc) else "form": str(exc)}) from None
    except FormErrors as failed:
        uow.session.rollback()
        log.info("console contact of user %s refused: %s", p.user_id, failed.errors)
        return render(
            request, "my_notices.html", p, status_code=422, form=typed, errors=failed.errors,
            kinds=MANAGER_KINDS, done=False, editable=True,
        )  # fmt: skip
    uow.commit()
    return Response(status_code=303, headers={"Location": "/console/my-notices?done=saved"})
