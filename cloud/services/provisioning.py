"""Commissioning a site once: one-time provisioning codes, gateway registration, meter assignment.

The cloud is the one source of truth for a commissioned site's meters (docs/installer.md,
"Commissioning with the cloud"):

1. a manager or installer creates a provisioning code for a project (:func:`create_code`): shown
   once, only its SHA-256 is stored, valid for a bounded time, good for one gateway;
2. the installer scans the lines and runs ``meterflow edge register --code``: :func:`register` checks
   the code, creates the gateway (with its first signing key, returned once as for ``POST
   /gateways``) and one *unassigned* meter per scanned meter, whose ``device_id`` is the gateway's
   meter id — nothing is typed twice;
3. the manager assigns meters to rooms (and accounts) (:func:`assign`); the gateway receives the
   assigned meters and their poll plans in its signed config (:func:`planned_meters`) and polls them.

A wrong, used or expired code is refused with the same 401 (nothing tells a guesser which codes
exist); the route throttles attempts per code and per client address.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.models import Gateway, Meter, MeterKind, MeterProtocol, ProvisioningCode
from cloud.services.audit import Actor, AuditAction, record
from cloud.services.errors import AuthError, Conflict
from cloud.services.hierarchy import _room, create_gateway, get_meter, get_project
from protocol.contract import PlannedMeter, Quantity

__all__ = [
    "CODE_ALPHABET",
    "DEFAULT_CODE_TTL",
    "MAX_CODE_TTL",
    "IssuedCode",
    "ScannedMeter",
    "assign",
    "create_code",
    "hash_code",
    "normalise_code",
    "planned_meters",
    "plans_meters",
    "register",
]

log = logging.getLogger(__name__)

CODE_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
"""No 0/O, 1/I: an installer reads the code off a phone and types it on a laptop."""
CODE_LENGTH = 12  # 60 bits: with the throttle, guessing is hopeless
DEFAULT_CODE_TTL = timedelta(hours=24)
MAX_CODE_TTL = timedelta(days=7)
_WRONG_CODE = "provisioning code not valid: wrong, already used or expired (ask for a new one)"


@dataclass(frozen=True)
class IssuedCode:
    row: ProvisioningCode
    code: str
    """Shown once: only its hash is kept."""


@dataclass(frozen=True)
class ScannedMeter:
    """One meter of the gateway's commissioning report."""

    id: str
    line: str
    protocol: str
    address: str
    model: str = ""
    circuit: int | None = None
    kind: str = MeterKind.ELECTRIC


def normalise_code(code: str) -> str:
    """Upper case, without the dashes and spaces it is shown with (``K7QF-2M9X-PA3D``)."""
    return "".join(ch for ch in code.upper() if ch not in "- ")


def hash_code(code: str) -> str:
    return hashlib.sha256(normalise_code(code).encode()).hexdigest()


def _format(code: str) -> str:
    return "-".join(code[i : i + 4] for i in range(0, len(code), 4))


def create_code(
    session: Session, actor: Actor, now: datetime, *, project_id: int, ttl: timedelta = DEFAULT_CODE_TTL
) -> IssuedCode:
    project = get_project(session, actor, project_id)
    if not timedelta(minutes=5) <= ttl <= MAX_CODE_TTL:
        raise Conflict("ttl_s: a provisioning code lives between 5 minutes and 7 days")
    code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
    row = ProvisioningCode(
        org_id=project.org_id,
        project_id=project_id,
        code_sha256=hash_code(code),
        created_by=actor.user_id,
        created_at=now,
        expires_at=now + ttl,
    )
    session.add(row)
    session.flush()
    record(
        session,
        actor,
        AuditAction.PROVISIONING_CODE_CREATED,
        org_id=project.org_id,
        target_type="project",
        target_id=project_id,
        detail={"code_id": row.id, "expires_at": row.expires_at.isoformat()},
        at=now,
    )
    return IssuedCode(row, _format(code))


def _meter_kind(meter: ScannedMeter) -> MeterKind:
    if meter.protocol == MeterProtocol.CJT188:
        return MeterKind.WATER
    return MeterKind(meter.kind)


def register(
    session: Session,
    now: datetime,
    *,
    code: str,
    device_id: str,
    name: str,
    meters: Sequence[ScannedMeter],
    ip: str = "",
) -> tuple[Gateway, list[Meter]]:
    """Use ``code`` (once) to create the gateway and its scanned meters, unassigned.

    The code is claimed by a conditional update, so two registrations racing with one code cannot
    both succeed; anything that fails after the claim rolls back with the caller's transaction.
    Raises :class:`AuthError` for a wrong, used or expired code, :class:`Conflict` for a gateway id
    that exists already or two meters with one id.
    """
    digest = hash_code(code)
    claimed = session.execute(
        update(ProvisioningCode)
        .where(
            col(ProvisioningCode.code_sha256) == digest,
            col(ProvisioningCode.used_at).is_(None),
            col(ProvisioningCode.expires_at) > now,
        )
        .values(used_at=now)
        .returning(col(ProvisioningCode.id))
    ).first()
    if claimed is None:
        raise AuthError(_WRONG_CODE)
    row = session.get(ProvisioningCode, claimed[0])
    assert row is not None
    if len({m.id for m in meters}) != len(meters):
        raise Conflict("meters: two meters with one id")
    actor = Actor(user_id=row.created_by, org_id=row.org_id, role="installer", ip=ip, username="provisioning")
    gateway = create_gateway(session, actor, device_id=device_id, name=name, project_id=row.project_id)
    session.flush()
    row.gateway_id = gateway.id
    created: list[Meter] = []
    for scanned in meters:
        meter = Meter(
            org_id=gateway.org_id,
            gateway_id=gateway.id or 0,
            device_id=scanned.id,
            address=scanned.address,
            kind=_meter_kind(scanned),
            protocol=MeterProtocol(scanned.protocol),
            model=scanned.model,
            line=scanned.line,
            circuit=scanned.circuit,
            installed_at=now,
        )
        session.add(meter)
        created.append(meter)
    session.flush()
    record(
        session,
        actor,
        AuditAction.GATEWAY_REGISTERED,
        org_id=gateway.org_id,
        target_type="gateway",
        target_id=gateway.id,
        detail={"code_id": row.id, "meters": len(created)},
        at=now,
    )
    log.info("gateway %s registered with code %d: %d meter(s)", device_id, row.id, len(created))
    return gateway, created


def assign(session: Session, actor: Actor, now: datetime, *, meter_id: int, room_id: int | None) -> Meter:
    """Put a meter in a room (None: take it out); the gateway polls assigned meters only."""
    meter = get_meter(session, actor, meter_id)
    if not meter.active:
        raise Conflict(f"meter {meter.device_id} was removed")
    if room_id is not None:
        _room(session, actor, room_id)
    before = meter.room_id
    meter.room_id = room_id
    session.flush()
    record(
        session,
        actor,
        AuditAction.METER_ASSIGNED,
        org_id=meter.org_id,
        target_type="meter",
        target_id=meter_id,
        detail={"room_before": before, "room": room_id},
        at=now,
    )
    return meter


def plans_meters(session: Session, gateway_id: int) -> bool:
    """Whether the cloud plans this gateway's meters: it was registered with a provisioning code.
    Gateways commissioned by hand (``POST /gateways``, meters in ``edge.toml``) keep their file."""
    found = session.scalars(
        select(col(ProvisioningCode.id)).where(col(ProvisioningCode.gateway_id) == gateway_id).limit(1)
    ).first()
    return found is not None


_READ = {
    MeterKind.ELECTRIC: (Quantity.ENERGY_TOTAL_KWH,),
    MeterKind.WATER: (Quantity.FLOW_TOTAL_M3,),
}


def planned_meters(session: Session, gateway_id: int, interval_s: int) -> tuple[PlannedMeter, ...]:
    """The gateway's active meters assigned to a room, as poll plans for its signed config."""
    rows = session.scalars(
        select(Meter)
        .where(
            col(Meter.gateway_id) == gateway_id,
            col(Meter.active).is_(True),
            col(Meter.room_id).is_not(None),
            col(Meter.line) != "",
        )
        .order_by(col(Meter.id))
    ).all()
    return tuple(
        PlannedMeter(
            id=m.device_id,
            line=m.line,
            protocol=m.protocol,  # type: ignore[arg-type]
            address=m.address,
            model=m.model or None,
            circuit=m.circuit,
            read=_READ.get(MeterKind(m.kind), _READ[MeterKind.ELECTRIC]),
            interval_s=interval_s,
        )
        for m in rows
    )
