"""Gateways and meters: registration, listing, replacement, the money left on a replaced meter; gateway
signing keys (rotation)."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request, Response

from cloud.api.access import Caller, may_enter_figures
from cloud.api.deps import (
    Db,
    Now,
    OptionalId,
    Paging,
    PathId,
    page_response,
)
from cloud.api.schemas import (
    ClosingFigureIn,
    EndOverlapIn,
    GatewayCreated,
    GatewayIn,
    GatewayKeyCreated,
    GatewayKeyOut,
    GatewayOut,
    MeterIn,
    MeterMoneyOut,
    MeterOut,
    MeterRateIn,
    ReplacedMeterOut,
    ReplaceMeterIn,
    RotateKeyIn,
)
from cloud.events import GATEWAY_KEYS_CHANGED
from cloud.models import GatewayKey
from cloud.services import accounts, hierarchy, keys
from cloud.services.pages import paged_list

router = APIRouter(tags=["devices"])


@router.get("/gateways", response_model=list[GatewayOut])
def list_gateways(p: Caller, uow: Db, page: Paging, response: Response) -> list[GatewayOut]:
    rows = hierarchy.list_gateways(uow.session, p.actor, page=page)
    return [GatewayOut.model_validate(g) for g in page_response(response, rows, page, lambda g: (g.id,))]


@router.post("/gateways", response_model=GatewayCreated, status_code=201)
def create_gateway(body: GatewayIn, p: Caller, uow: Db) -> GatewayCreated:
    gw = hierarchy.create_gateway(
        uow.session,
        p.actor,
        device_id=body.device_id,
        name=body.name,
        project_id=body.project_id,
        org_id=body.org_id,
    )
    created = GatewayCreated(  # the key moved to gateway_key at insert: read it before the commit
        id=gw.id or 0,
        org_id=gw.org_id,
        project_id=gw.project_id,
        device_id=gw.device_id,
        name=gw.name,
        signing_key=gw.signing_key,
    )
    uow.commit()
    return created


@router.get("/gateways/{gateway_id}/keys", response_model=list[GatewayKeyOut])
def list_gateway_keys(
    gateway_id: PathId, p: Caller, uow: Db, page: Paging, response: Response
) -> list[GatewayKeyOut]:
    """The gateway's signing keys, oldest first: ids and dates, never the secrets."""
    rows = paged_list(keys.list_keys(uow.session, p.actor, gateway_id), page, _by_created)
    return [GatewayKeyOut.model_validate(k) for k in page_response(response, rows, page, _by_created)]


def _by_created(key: GatewayKey) -> tuple[str, str]:
    return (key.created_at.isoformat(), key.kid)


@router.post("/gateways/{gateway_id}/keys", response_model=GatewayKeyCreated, status_code=201)
def rotate_gateway_key(
    gateway_id: PathId, body: RotateKeyIn, p: Caller, uow: Db, at: Now
) -> GatewayKeyCreated:
    """A new signing key (its secret shown this once); older keys stay valid for ``overlap_s``."""
    key, secret = keys.rotate(uow.session, p.actor, gateway_id, at, overlap=timedelta(seconds=body.overlap_s))
    created = GatewayKeyCreated(
        kid=key.kid,
        created_at=key.created_at,
        not_after=key.not_after,
        seen_at=key.seen_at,
        secret=secret,
        old_keys_retire_at=at + timedelta(seconds=body.overlap_s),
    )
    uow.commit()
    uow.announce(GATEWAY_KEYS_CHANGED, {"gateway_id": gateway_id})
    return created


@router.post("/gateways/{gateway_id}/keys/end-overlap", response_model=list[GatewayKeyOut])
def end_gateway_key_overlap(
    gateway_id: PathId, body: EndOverlapIn, p: Caller, uow: Db, at: Now
) -> list[GatewayKeyOut]:
    """Retire every key but the newest now (409 while the gateway has not used the newest)."""
    rows = keys.end_overlap(uow.session, p.actor, gateway_id, at, force=body.force)
    out = [GatewayKeyOut.model_validate(k) for k in rows]
    uow.commit()
    uow.announce(GATEWAY_KEYS_CHANGED, {"gateway_id": gateway_id})
    return out


@router.get("/meters", response_model=list[MeterOut])
def list_meters(
    p: Caller,
    uow: Db,
    page: Paging,
    response: Response,
    gateway_id: OptionalId = None,
    active: bool | None = True,
) -> list[MeterOut]:
    rows = hierarchy.list_meters(uow.session, p.actor, gateway_id=gateway_id, active=active, page=page)
    return [MeterOut.model_validate(m) for m in page_response(response, rows, page, lambda m: (m.id,))]


@router.post("/meters", response_model=MeterOut, status_code=201)
def create_meter(body: MeterIn, p: Caller, uow: Db) -> MeterOut:
    meter = hierarchy.create_meter(uow.session, p.actor, **body.model_dump())
    uow.commit()
    return MeterOut.model_validate(meter)


@router.get("/meters/{meter_id}", response_model=MeterOut)
def get_meter(meter_id: PathId, p: Caller, uow: Db) -> MeterOut:
    return MeterOut.model_validate(hierarchy.get_meter(uow.session, p.actor, meter_id))


def money_out(money: accounts.MeterMoney) -> MeterMoneyOut:
    return MeterMoneyOut(
        meter_id=money.meter_id,
        figure_fen=money.figure.fen,
        source=str(money.figure.source),
        held_fen=money.figure.held_fen,
        read_fen=money.figure.read_fen,
        read_at=money.figure.read_at,
        returned_fen=None if money.returned is None else money.returned.returned_fen,
        approval_id=None if money.approval is None else money.approval.id,
    )


@router.post("/meters/{meter_id}/replace", response_model=ReplacedMeterOut, status_code=201)
def replace_meter(
    meter_id: PathId, body: ReplaceMeterIn, request: Request, p: Caller, uow: Db, at: Now
) -> ReplacedMeterOut:
    """Swap the meter; the paying account keeps its balance and tier counter. A local-prepay meter's
    money goes back to the wallet at the meter's figure, or waits for approval above the limit
    (``money``)."""
    if body.final_remaining_fen is not None:
        may_enter_figures(p)
    done = accounts.replace_meter(
        uow.session,
        p.actor,
        at,
        meter_id=meter_id,
        approval_limit_fen=request.app.state.settings.approval_limit_fen,
        **body.model_dump(),
    )
    uow.commit()
    out = ReplacedMeterOut.model_validate(done.meter)
    out.money = None if done.money is None else money_out(done.money)
    return out


@router.post("/meters/{meter_id}/closing-figure", response_model=MeterMoneyOut)
def closing_figure(
    meter_id: PathId, body: ClosingFigureIn, request: Request, p: Caller, uow: Db, at: Now
) -> MeterMoneyOut:
    """The money read off a replaced local-prepay meter whose money was not handed back (its approval
    was rejected): back to the paying account's wallet, or an approval above the limit. Audited."""
    money = accounts.closing_figure(
        uow.session,
        p.actor,
        at,
        meter_id=meter_id,
        remaining_fen=body.remaining_fen,
        reason=body.reason,
        approval_limit_fen=request.app.state.settings.approval_limit_fen,
    )
    uow.commit()
    return money_out(money)


@router.put("/meters/{meter_id}/max-rate", response_model=MeterOut, summary="额定最大用量速率 / rated rate")
def set_max_rate(meter_id: PathId, body: MeterRateIn, p: Caller, uow: Db, at: Now) -> MeterOut:
    """What this supply can deliver per hour (billed side); readings beyond it are held. Audited."""
    meter = hierarchy.set_max_rate(
        uow.session,
        p.actor,
        at,
        meter_id=meter_id,
        max_rate_per_hour=body.max_rate_per_hour,
        reason=body.reason,
    )
    uow.commit()
    return MeterOut.model_validate(meter)
