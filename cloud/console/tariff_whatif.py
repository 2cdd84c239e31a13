"""The tariffs page's "what would last month have cost under a new version?" (电价测算).

Prices typed into the form become a spec, read by the one spec reader
(:meth:`cloud.domain.tariffs.TariffVersion.from_spec`: what it refuses is refused here, naming the
field); :func:`cloud.services.tariff_whatif.month_what_if` re-rates the month's billed readings in
memory. A GET: nothing is stored, nothing moves — storing a version stays ``POST
/tariffs/{id}/versions``. Governed by the rule of ``GET /tariffs`` (prices: admin, manager, finance).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from cloud.api.deps import Db, Now
from cloud.console import guard
from cloud.console.queries import zone_of
from cloud.console.reports import month_bounds
from cloud.console.web import ConsoleRoute, Staff, optional_id, render
from cloud.domain.errors import TariffError
from cloud.domain.tariffs import MAX_SPEC_TEXT, TOU_REGISTERS, TariffVersion
from cloud.services import hierarchy
from cloud.services.pages import Page
from cloud.services.tariff_whatif import month_what_if

__all__ = ["draft_spec", "router"]

log = logging.getLogger(__name__)
router = APIRouter(route_class=ConsoleRoute)

Text = Annotated[str, Query(max_length=MAX_SPEC_TEXT)]
KINDS = ("flat", "tou", "tiered", "water", "water_tiered")


def _tiers(text: str) -> list[dict[str, Any]]:
    """One tier a line, ``upto price`` (``- price`` or just ``price`` for the last, unbounded one)."""
    tiers: list[dict[str, Any]] = []
    for i, line in enumerate(x for x in text.splitlines() if x.strip()):
        parts = line.replace(",", " ").split()
        if len(parts) == 1:
            parts = ["-", parts[0]]
        if len(parts) != 2:
            raise TariffError(f"tiers[{i}]: write 'upto price' (e.g. '200 0.5683'; the last '- 0.8683')")
        upto, price = parts
        tiers.append({"upto": None if upto in ("-", "∞") else upto, "price": price})
    return tiers


def draft_spec(kind: str, price: str, tou: dict[str, str], tiers: str, tier_reset: str) -> dict[str, Any]:
    """The form's fields as a spec for :meth:`TariffVersion.from_spec` (which validates every value)."""
    if kind in ("flat", "water"):
        return {"kind": kind, "price": price.strip()}
    if kind == "tou":
        return {"kind": "tou", "tou_prices_yuan": {k: v.strip() for k, v in tou.items() if v.strip()}}
    if kind in ("tiered", "water_tiered"):
        return {
            "kind": "water" if kind == "water_tiered" else "tiered",
            "tiers": _tiers(tiers),
            "tier_reset": tier_reset,
        }
    raise TariffError(f"kind: one of {list(KINDS)}")


def _last_month(at: datetime) -> str:
    first = at.replace(day=1)
    return (first - timedelta(days=1)).strftime("%Y-%m")


@router.get("/tariffs/whatif", response_class=HTMLResponse)
def whatif_page(
    request: Request,
    p: Staff,
    uow: Db,
    at: Now,
    project: Annotated[str, Query(alias="project_id", max_length=12)] = "",
    building: Annotated[str, Query(alias="building_id", max_length=12)] = "",
    month: Annotated[str, Query(pattern=r"^(\d{4}-\d{2})?$")] = "",
    kind: Annotated[str, Query(max_length=16)] = "flat",
    price: Text = "",
    t1: Text = "",
    t2: Text = "",
    t3: Text = "",
    t4: Text = "",
    tiers: Annotated[str, Query(max_length=2000)] = "",
    tier_reset: Annotated[str, Query(max_length=16)] = "monthly",
) -> Response:
    guard.require(p, "GET", "/tariffs")
    zone = zone_of(uow.session, p.actor)
    month = month or _last_month(at.astimezone(zone))
    projects = list(hierarchy.list_projects(uow.session, p.actor, page=Page(200)))
    project_id, building_id = optional_id(project, "project_id"), optional_id(building, "building_id")
    tou = dict(zip((q.value for q in TOU_REGISTERS), (t1, t2, t3, t4), strict=True))
    form = {
        "project_id": project_id, "building_id": building_id, "month": month, "kind": kind, "price": price,
        "tou": tou, "tiers": tiers, "tier_reset": tier_reset,
    }  # fmt: skip
    ctx: dict[str, Any] = {"form": form, "projects": projects, "kinds": KINDS, "result": None, "error": ""}
    if project_id is None:  # the empty form
        return render(request, "tariff_whatif.html", p, **ctx)
    start, end = month_bounds(month, uow.session, p.actor)
    try:
        draft = TariffVersion.from_spec("draft", start, draft_spec(kind, price, tou, tiers, tier_reset))
    except TariffError as exc:
        log.info("console tariff what-if refused (422): %s", exc)
        ctx["error"] = str(exc)
        return render(request, "tariff_whatif.html", p, status_code=422, **ctx)
    ctx["result"] = month_what_if(
        uow.session, p.actor, draft, project_id=project_id, building_id=building_id, start=start, end=end,
        tz=zone,
    )  # fmt: skip
    ctx["draft"] = draft.to_spec()
    return render(request, "tariff_whatif.html", p, **ctx)
