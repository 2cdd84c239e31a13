"""Tariff loading: which tariff a meter is billed by, and its stored versions as a schedule.

Tariff versions are stored as JSON ``spec``, read by the one reader the API validates with
(:meth:`cloud.domain.tariffs.TariffVersion.from_spec`). :func:`schedule_for` loads a tariff's versions
once per unit of work (:class:`TariffCache`); a version no reader can use makes the tariff a faulty
unit (:class:`cloud.services.isolation.UnitFault`) whose readings are held, alone. Billing
(:mod:`cloud.services.billing`), the gateway's credit horizons (:mod:`cloud.services.horizons`), tariff
coverage (:mod:`cloud.services.tariff_coverage`) and the tenant statement choose tariffs through here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import JSON, Text, case, cast, func, null, select, type_coerce
from sqlalchemy.orm import Session
from sqlmodel import col

from cloud.domain.errors import DomainError, TariffError
from cloud.domain.tariffs import MAX_SPEC_SIZE, TariffSchedule
from cloud.domain.tariffs import TariffVersion as DomainVersion
from cloud.models import MeterKind, Project, Tariff, TariffVersion
from cloud.services.isolation import Unit, UnitFault, UnitKind, clear_fault

__all__ = ["UNREADABLE", "MeterTariff", "TariffCache", "schedule_for", "tariff_id_of"]


@dataclass
class TariffCache:
    """Per unit of work: tariff schedules already loaded, and tariffs found unusable."""

    schedules: dict[int, TariffSchedule | None] = field(default_factory=dict)
    unusable: dict[int, UnitFault] = field(default_factory=dict)


class MeterTariff(Protocol):
    """What choosing a meter's tariff reads of it."""

    @property
    def kind(self) -> str: ...
    @property
    def tariff_id(self) -> int | None: ...


UNREADABLE = (DomainError, TypeError, ValueError, AttributeError, KeyError, ArithmeticError, RecursionError)
"""What parsing a stored spec raises when the row is not what the API would have written."""


def schedule_for(session: Session, tariff_id: int, cache: TariffCache | None = None) -> TariffSchedule | None:
    """Every version of ``tariff_id`` as a schedule (None when it has no version).

    A version no reader can use (written past the API, or by an older release: a price of 10³⁰, a
    megabyte name, a spec of the wrong shape) raises :class:`UnitFault` naming the tariff, so the
    callers hold that tariff's readings alone (see :func:`cloud.services.billing.bill_reading`)."""
    if cache is not None:
        if tariff_id in cache.schedules:
            return cache.schedules[tariff_id]
        if tariff_id in cache.unusable:
            raise cache.unusable[tariff_id]
    size = func.length(cast(col(TariffVersion.spec), Text))
    rows = session.execute(  # a spec too long is not even transferred: parsing a megabyte per batch
        select(
            col(TariffVersion.id),
            col(TariffVersion.effective_from),
            size,
            type_coerce(case((size <= MAX_SPEC_SIZE, col(TariffVersion.spec)), else_=null()), JSON),
        )
        .where(col(TariffVersion.tariff_id) == tariff_id)
        .order_by(col(TariffVersion.effective_from))
    ).all()
    try:
        for version_id, _, length, spec in rows:
            if spec is None and length is not None and length > MAX_SPEC_SIZE:
                raise TariffError(f"version {version_id}: spec: {length} characters, at most {MAX_SPEC_SIZE}")
        schedule = (
            TariffSchedule(DomainVersion.from_spec(str(i), at, spec) for i, at, _, spec in rows)
            if rows
            else None
        )
    except UNREADABLE as exc:
        fault = _tariff_fault(session, tariff_id, exc)
        if cache is not None:
            cache.unusable[tariff_id] = fault
        raise fault from exc
    clear_fault(session, Unit(UnitKind.TARIFF, tariff_id))
    if cache is not None:
        cache.schedules[tariff_id] = schedule
    return schedule


def _tariff_fault(session: Session, tariff_id: int, exc: BaseException) -> UnitFault:
    with session.no_autoflush:
        tariff = session.get(Tariff, tariff_id)
    unit = Unit(
        UnitKind.TARIFF,
        tariff_id,
        org_id=tariff.org_id if tariff else None,
        name=tariff.name if tariff else "",
    )
    detail = str(exc)[:300]
    return UnitFault(
        unit,
        f"a stored version cannot be read ({detail}); readings it should rate are held",
        f"已存电价版本无法读取（{detail}），相关读数挂起，请修正电价",
    )


def tariff_id_of(meter: MeterTariff, project: Project) -> int | None:
    """The meter's own tariff, else its project's default for the meter's kind (None: no tariff)."""
    if meter.tariff_id is not None:
        return meter.tariff_id
    return project.water_tariff_id if meter.kind == MeterKind.WATER else project.electric_tariff_id
