"""Notification settings: a project's channels, SMS signature and template ids (managers); an
account's phone and language (finance and managers, who keep tenants' phone numbers); a staff user's
own phone, language and manager notices (``/auth/me/notify-contact``; managers set them for the staff
of their organisation at ``/users/{id}/notify-contact``); a payer's one-shot subscribe consents (the
mini-program calls it after ``wx.requestSubscribeMessage``).
docs/notifications.md describes what the sender does with them."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from cloud.api.access import Caller
from cloud.api.deps import Db, Now, PathId, Principal
from cloud.api.routes.tenant import PayerDep
from cloud.api.schemas import In
from cloud.models import StaffContact
from cloud.services.notify import config

router = APIRouter(tags=["notifications"])

Channel = Literal["wechat_subscribe", "wechat_template", "sms_aliyun", "sms_tencent", "log"]
HHMM = Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="local time HH:MM")]
TemplateId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")]


class SettingsIn(In):
    channels: list[Channel] = Field(min_length=1, max_length=5, description="tried in this order")
    sms_sign: str = Field(default="", max_length=32, description="the approved SMS signature (签名)")
    templates: dict[Annotated[str, Field(max_length=32)], dict[Channel, TemplateId]] = Field(
        default_factory=dict, max_length=40, description="{event kind: {channel: vendor template id}}"
    )
    quiet_start: HHMM = "22:00"
    quiet_end: HHMM = "08:00"
    lang: Literal["zh", "en"] = "zh"


class SettingsOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    project_id: int
    channels: list[str]
    sms_sign: str
    templates: dict[str, dict[str, str]]
    quiet_start: str
    quiet_end: str
    lang: str


class ContactIn(In):
    phone: str = Field(default="", max_length=20, pattern=r"^(\+?[0-9]{6,16})?$")
    lang: Literal["", "zh", "en"] = ""


class ContactOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    account_id: int
    phone: str
    lang: str
    wechat: bool = Field(description="a WeChat recipient is known")


ManagerKind = Literal["gateway_offline", "holds_waiting", "topup_failed"]


class StaffContactIn(In):
    phone: str = Field(
        default="",
        max_length=20,
        pattern=r"^(\+?[0-9]{6,16})?$",
        description="for SMS; empty: none (the next channel of the project's order)",
    )
    wechat_openid: str = Field(
        default="",
        max_length=128,
        pattern=r"^[A-Za-z0-9_\-]{0,128}$",
        description="official-account openid, for template messages",
    )
    lang: Literal["zh", "en"] = "zh"
    notices: list[ManagerKind] = Field(default_factory=list, max_length=3,
                                       description="manager notices wanted; empty: none")  # fmt: skip


class StaffContactOut(BaseModel):
    user_id: int
    phone: str
    wechat_openid: str
    lang: str
    notices: list[str]


class ConsentIn(In):
    template_id: TemplateId
    app: Literal["miniprogram", "official"] = "miniprogram"


class ConsentOut(BaseModel):
    template_id: str
    remaining: int


@router.get("/projects/{project_id}/notify-settings", response_model=SettingsOut)
def get_settings(project_id: PathId, p: Caller, uow: Db) -> SettingsOut:
    return SettingsOut.model_validate(config.project_settings(uow.session, p.actor, project_id))


@router.put("/projects/{project_id}/notify-settings", response_model=SettingsOut)
def put_settings(project_id: PathId, body: SettingsIn, p: Caller, uow: Db, at: Now) -> SettingsOut:
    row = config.set_project_settings(uow.session, p.actor, at, project_id=project_id, **body.model_dump())
    uow.commit()
    return SettingsOut.model_validate(row)


@router.put("/accounts/{account_id}/contact", response_model=ContactOut)
def put_contact(account_id: PathId, body: ContactIn, p: Caller, uow: Db, at: Now) -> ContactOut:
    row = config.set_contact(
        uow.session, p.actor, at, account_id=account_id, phone=body.phone, lang=body.lang
    )
    uow.commit()
    return ContactOut(
        account_id=row.account_id,
        phone=row.phone,
        lang=row.lang,
        wechat=bool(row.miniprogram_openid or row.official_openid),
    )


def _staff_out(row: StaffContact | None, user_id: int) -> StaffContactOut:
    if row is None:  # nothing set: no phone, the default language, no notices
        return StaffContactOut(user_id=user_id, phone="", wechat_openid="", lang="zh", notices=[])
    return StaffContactOut(user_id=row.user_id, phone=row.phone, wechat_openid=row.official_openid,
                           lang=row.lang, notices=list(row.notices))  # fmt: skip


def _put_staff(user_id: int, body: StaffContactIn, p: Principal, uow: Db, at: Now) -> StaffContactOut:
    row = config.set_staff_contact(
        uow.session,
        p.actor,
        at,
        user_id=user_id,
        phone=body.phone,
        official_openid=body.wechat_openid,
        lang=body.lang,
        notices=list(body.notices),
    )
    uow.commit()
    return _staff_out(row, user_id)


@router.get("/auth/me/notify-contact", response_model=StaffContactOut)
def get_my_contact(p: Caller, uow: Db) -> StaffContactOut:
    return _staff_out(config.staff_contact(uow.session, p.actor, p.user_id), p.user_id)


@router.put("/auth/me/notify-contact", response_model=StaffContactOut,
            summary="My phone, language and the manager notices I want")  # fmt: skip
def put_my_contact(body: StaffContactIn, p: Caller, uow: Db, at: Now) -> StaffContactOut:
    return _put_staff(p.user_id, body, p, uow, at)


@router.get("/users/{user_id}/notify-contact", response_model=StaffContactOut)
def get_staff_contact(user_id: PathId, p: Caller, uow: Db) -> StaffContactOut:
    return _staff_out(config.staff_contact(uow.session, p.actor, user_id), user_id)


@router.put("/users/{user_id}/notify-contact", response_model=StaffContactOut,
            summary="A staff user's phone, language and manager notices (their managers)")  # fmt: skip
def put_staff_contact(user_id: PathId, body: StaffContactIn, p: Caller, uow: Db, at: Now) -> StaffContactOut:
    return _put_staff(user_id, body, p, uow, at)


@router.post("/tenant/accounts/{account_id}/subscriptions", response_model=ConsentOut, status_code=201,
             summary="The payer allowed one more message of a template (订阅消息)")  # fmt: skip
def subscribe(account_id: PathId, body: ConsentIn, payer: PayerDep, uow: Db, at: Now) -> ConsentOut:
    row = config.grant_consent(
        uow.session,
        payer,
        at,
        account_id=account_id,
        template_id=body.template_id,
        official=body.app == "official",
    )
    uow.commit()
    return ConsentOut(template_id=row.template_id, remaining=row.granted - row.used)
