"""The gateway's retained config: a credit horizon per remote-prepay meter, sealed and numbered.

:func:`gateway_config` builds the retained ``GatewayConfig`` with a credit horizon per remote-prepay
meter (:func:`cloud.domain.horizons.credit_horizon`): the register value at which the meter's share of
its account's money runs out, for the gateway to enforce while it cannot reach the cloud. It reads the
tariff like billing does (:func:`cloud.services.tariff_loading.schedule_for`) and the account's tier usage
(:mod:`cloud.services.tier_usage`). It is sealed with the gateway's key and numbered, like commands
are signed (docs/security.md, "Signed messages and gateway keys"); the runtime
(:class:`cloud.runtime`) publishes it retained when a gateway's balances or meters change.
"""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_FLOOR, Decimal

import msgspec
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.domain.errors import DomainError
from cloud.domain.horizons import credit_horizon
from cloud.models import (
    Account,
    AccountMeter,
    AccountStatus,
    Gateway,
    Meter,
    MeterKind,
    MeterState,
    PrepayMode,
)
from cloud.services import tier_usage
from cloud.services.arrears import project_zone
from cloud.services.control import ControlConfig
from cloud.services.isolation import UnitFault
from cloud.services.keys import down_key
from cloud.services.provisioning import planned_meters, plans_meters
from cloud.services.rating import BillingCache, snapshot_values
from cloud.services.tariff_loading import schedule_for, tariff_id_of
from protocol.contract import CreditHorizon, GatewayConfig, Quantity, seal_message

__all__ = ["gateway_config"]


def gateway_config(
    session: Session,
    gateway: Gateway,
    now: datetime,
    config: ControlConfig,
    cache: BillingCache | None = None,
) -> bytes:
    """The retained config of ``gateway``, sealed: a credit horizon per billed remote-prepay meter.

    Each call issues the gateway's next config version (``gateway.config_version``, raised in the
    caller's transaction, so two replicas never issue the same version) and seals it with
    :func:`cloud.services.keys.down_key`.
    """
    cache = cache or BillingCache()
    rows = session.execute(
        select(Meter, Account)
        .join(AccountMeter, col(AccountMeter.meter_id) == col(Meter.id))
        .join(Account, col(Account.id) == col(AccountMeter.account_id))
        .where(
            col(Meter.gateway_id) == gateway.id,
            col(Meter.active).is_(True),
            col(AccountMeter.unlinked_at).is_(None),
            col(Account.status) == AccountStatus.OPEN,
        )
    ).all()
    per_account: dict[int, int] = {}
    for meter, account in rows:
        if meter.prepay_mode == PrepayMode.REMOTE:
            per_account[account.id or 0] = per_account.get(account.id or 0, 0) + 1
    horizons: dict[str, CreditHorizon] = {}
    ids = [m.id for m, _ in rows if m.id is not None]
    states = {
        s.meter_id: s for s in session.scalars(select(MeterState).where(col(MeterState.meter_id).in_(ids)))
    }
    for meter, account in rows:
        if meter.prepay_mode != PrepayMode.REMOTE or meter.id is None:
            continue
        state = states.get(meter.id)
        if state is None or not state.last_values:
            continue
        quantity = Quantity.FLOW_TOTAL_M3 if meter.kind == MeterKind.WATER else Quantity.ENERGY_TOTAL_KWH
        register = snapshot_values(state.last_values).get(quantity)
        project = cache.project(session, account.project_id)
        tariff_id = tariff_id_of(meter, project)
        try:
            schedule = schedule_for(session, tariff_id, cache) if tariff_id is not None else None
            tz = project_zone(project)
        except UnitFault:
            continue  # this meter's tariff or project row is unusable: billing holds and alarms it
        if register is None or schedule is None:
            continue
        limit_fen = project.credit_limit_fen if account.credit_limit_fen is None else account.credit_limit_fen
        share = (account.balance_fen + limit_fen) // per_account[account.id or 0]
        try:
            horizon = credit_horizon(
                schedule=schedule,
                at=now,
                register_value=register,
                balance_fen=share,
                residue_milli=account.residue_millifen,
                credit_limit_fen=0,
                counter=tier_usage.counter_at(session, account.id or 0, meter.kind, schedule, now, tz),
                protected=meter.protected or account.protected,
                tz=tz,
            )
        except DomainError:
            continue
        if meter.ct_ratio != 1:
            # the horizon is in billed units; the gateway compares raw register values
            over = (horizon.limit - register) / Decimal(meter.ct_ratio)
            horizon = msgspec.structs.replace(
                horizon, limit=(register + over).quantize(Decimal("0.01"), rounding=ROUND_FLOOR)
            )
        horizons[meter.device_id] = horizon
    assert gateway.id is not None
    version = session.execute(
        update(Gateway)
        .where(col(Gateway.id) == gateway.id)
        .values(config_version=col(Gateway.config_version) + 1)
        .returning(col(Gateway.config_version))
    ).scalar_one()
    message = GatewayConfig(
        gateway=gateway.device_id,
        version=int(version),
        issued_at=now,
        expires_at=now + config.config_ttl,
        horizons=horizons,
        offline_after_s=config.offline_after_s,
        meters=(
            planned_meters(session, gateway.id, config.poll_interval_s)
            if plans_meters(session, gateway.id)
            else None
        ),
    )
    kid, key = down_key(session, gateway.id, now)
    return seal_message(message, kid=kid, key=key)
