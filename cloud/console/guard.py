"""Who may see which console page and press which button: answered by the API's role table.

There is no second table. Each page and action names the API route whose rule governs it
(:data:`PAGES`, and the ``(method, path)`` pairs the templates ask :func:`may` about); the rule in
:data:`cloud.api.access.POLICY` decides, exactly as for the REST call the page stands for. The console
as a whole is the property company's (the rule of ``GET /organisations``: staff); tenants have their
own H5 page.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloud.api.access import rule_for
from cloud.api.deps import Principal
from cloud.services.errors import PermissionDenied

__all__ = ["CONSOLE", "PAGES", "Page", "may", "may_use_console", "require", "visible_pages"]

CONSOLE = ("GET", "/organisations")
"""The route whose rule says who uses the console at all."""


@dataclass(frozen=True)
class Page:
    key: str
    """Catalogue key of its title and its URL under /console."""
    href: str
    route: tuple[str, str]
    """The API route whose rule admits the page."""


PAGES: tuple[Page, ...] = (
    Page("dashboard", "/console/", ("GET", "/meters")),
    Page("monitor", "/console/rooms", ("GET", "/meters")),
    Page("holds", "/console/holds", ("GET", "/holds")),
    Page("approvals", "/console/approvals", ("GET", "/approvals")),
    Page("alarms", "/console/alarms", ("GET", "/alarms")),
    Page("reports", "/console/reports", ("GET", "/meters")),
    Page("gateways", "/console/gateways", ("GET", "/gateways")),
    Page("tariffs", "/console/tariffs", ("GET", "/tariffs")),
    Page("settings", "/console/settings", ("GET", "/projects")),
    Page("accounts", "/console/accounts", ("GET", "/accounts")),
    Page("dead-letters", "/console/dead-letters", ("GET", "/dead-letters")),
)


def may(principal: Principal, method: str, path: str) -> bool:
    """Whether the role table admits ``principal`` to ``method path`` (an API route template)."""
    rule = rule_for(method, path)
    if rule is None:  # a route that does not exist admits nobody, as in the API
        return False
    return not rule.public and rule.admits(principal) and may_use_console(principal)


def may_use_console(principal: Principal) -> bool:
    rule = rule_for(*CONSOLE)
    return rule is not None and rule.admits(principal)


def require(principal: Principal, method: str, path: str) -> None:
    """Refuse (403) what the role table refuses the principal."""
    if not may(principal, method, path):
        raise PermissionDenied(f"role {principal.role} may not {method} {path}")


def visible_pages(principal: Principal) -> list[Page]:
    return [p for p in PAGES if may(principal, *p.route)]
