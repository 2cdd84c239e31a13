"""Who may call what: the one table of routes → role sets of the API.

Every route under ``/api/v1`` is checked here, before its handler runs and its body is validated
(:func:`authorize`, a dependency of every router in :func:`cloud.api.app.build_app`): the caller's role
must be in the route's :class:`Rule`. A route missing from :data:`POLICY` is refused to everyone (403,
logged), so a route added without a rule is closed, not open; ``tests/cloud/test_access_matrix.py``
fails on it and on every rule the API does not keep. The services still scope every row to the
caller's organisation (another organisation's row is 404) and a tenant to their own accounts.

Roles (:class:`cloud.models.Role`) follow the jobs of a property company; the role sets that rules name
(``MANAGER``, ``MONEY``, ``STAFF``, ...) are defined once in :mod:`cloud.models.roles` (re-exported here
for the route modules) and mean the same in the console and the services.
Decisions that are finer than a route (which alarms an installer sees, who may enter a money figure)
are named here too (:data:`FIGURE_ROLES`, :data:`APPROVER_ROLES`, :func:`alarm_kinds_for`).

``docs/roles.md`` shows the table, rendered from this module by :mod:`cloud.api.roles_doc` (``python
-m cloud.api.roles_doc --write``); a test fails when the two differ.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request

from cloud.api.deps import Bearer, Db, Now, Principal, authenticate
from cloud.models import AlarmKind, Role
from cloud.models.roles import ADMIN, BUILDER, EVERYONE, HOLDERS, MANAGER, MONEY, PUBLIC, STAFF
from cloud.services.errors import AuthError, PermissionDenied

__all__ = [
    "ADMIN",
    "API_PREFIX",
    "APPROVER_ROLES",
    "BUILDER",
    "EVERYONE",
    "FIGURE_ROLES",
    "HOLDERS",
    "MANAGER",
    "MONEY",
    "PAGE_PREFIXES",
    "POLICY",
    "PUBLIC",
    "STAFF",
    "Caller",
    "Example",
    "Rule",
    "alarm_kinds_for",
    "authorize",
    "may_enter_figures",
    "rule_for",
]

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
PAGE_PREFIXES = ("/h5/",)
"""Server-rendered pages outside the API whose routes are in :data:`POLICY` too (paths as served)."""

# --- finer decisions, named by the role sets of cloud.models.roles ---------------------------------------

FIGURE_ROLES = MONEY
"""Who may enter a money figure read off a meter (a replaced or closed local-prepay meter's money):
installers replace meters but move no money; their replacement takes the gateway's reading."""
APPROVER_ROLES = MONEY
"""Who may approve or reject a pending approval (never the user who asked for it)."""


def may_enter_figures(principal: Principal) -> None:
    """Refuse (403) a money figure typed by a role outside :data:`FIGURE_ROLES`."""
    if principal.role not in FIGURE_ROLES:
        raise PermissionDenied(
            f"role {principal.role} may not enter money figures: the gateway's last reading is used, "
            "or finance enters the figure (POST /meters/{id}/closing-figure)"
        )


_DEVICE_ALARMS = frozenset(
    {
        AlarmKind.GATEWAY_OFFLINE,
        AlarmKind.METER_OFFLINE,
        AlarmKind.COMMAND_ABANDONED,
        AlarmKind.COMMAND_REJECTED,
        AlarmKind.READING_HELD,
    }
)


def alarm_kinds_for(role: Role) -> frozenset[str] | None:
    """The alarm kinds a role sees; None: all. Installers see device alarms only (money alarms carry
    balances and amounts)."""
    return frozenset(str(k) for k in _DEVICE_ALARMS) if role is Role.INSTALLER else None


# --- the table -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """A request that the route should accept from an admitted role, for the access matrix test.

    Strings ``"{name}"`` are placeholders for the ids of a seeded organisation (``{meter}``,
    ``{account}``, ...; ``{uniq}`` makes a fresh name); ``path`` names the placeholder of a path
    parameter when it is not the parameter's name without ``_id`` (a meter that may be replaced)."""

    body: Mapping[str, Any] | None = None
    path: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    roles: frozenset[Role]
    why: str
    """One line for docs/roles.md: why these roles."""
    own: bool = False
    """Tenants see only their own accounts here."""
    platform: bool = False
    """Only administrators without an organisation (the platform's)."""
    example: Example = Example()

    @property
    def public(self) -> bool:
        return not self.roles

    def admits(self, principal: Principal) -> bool:
        if principal.role not in self.roles:
            return False
        return not self.platform or principal.org_id is None


_PAYER = "a WeChat payer's own bound accounts: the payer token is checked by the route"
_PAYER_LOGIN = "exchange a WeChat login code for a payer token"
_READING_FIGURE = "the gateway's reading or a figure finance enters; approved above the limit"

POLICY: Mapping[tuple[str, str], Rule] = {
    # auth
    ("POST", "/auth/login"): Rule(
        PUBLIC, "exchange a password for a token", example=Example({"username": "x", "password": "y"})
    ),
    ("GET", "/auth/me"): Rule(EVERYONE, "who am I"),
    # users
    ("GET", "/users"): Rule(ADMIN, "user administration"),
    ("POST", "/users"): Rule(
        ADMIN,
        "user administration",
        example=Example(
            {"username": "u-{uniq}", "password": "a long password", "role": "installer", "org_id": "{org}"}
        ),
    ),
    ("POST", "/users/{user_id}/deactivate"): Rule(
        ADMIN, "stops the user's logins and live tokens", example=Example({"reason": "离职"})
    ),
    ("POST", "/users/{user_id}/reactivate"): Rule(
        ADMIN, "user administration", example=Example({"reason": "复职"})
    ),
    ("POST", "/users/{user_id}/password"): Rule(
        ADMIN, "reset a forgotten password; live tokens stop", example=Example({"password": "a new password"})
    ),
    # hierarchy
    ("GET", "/organisations"): Rule(STAFF, "the organisation they work for"),
    ("POST", "/organisations"): Rule(
        ADMIN, "new property companies", platform=True, example=Example({"name": "org-{uniq}"})
    ),
    ("GET", "/projects"): Rule(STAFF, "the site tree"),
    ("POST", "/projects"): Rule(
        MANAGER,
        "a project carries the arrears policy",
        example=Example({"name": "p-{uniq}", "org_id": "{org}"}),
    ),
    ("PATCH", "/projects/{project_id}"): Rule(
        MANAGER,
        "a project carries the arrears policy",
        example=Example({"friendly_start": "19:00", "friendly_end": "08:00"}),
    ),
    ("GET", "/projects/{project_id}/buildings"): Rule(STAFF, "the site tree"),
    ("POST", "/projects/{project_id}/buildings"): Rule(
        BUILDER, "building the site tree", example=Example({"name": "b-{uniq}"})
    ),
    ("GET", "/buildings/{building_id}/floors"): Rule(STAFF, "the site tree"),
    ("POST", "/buildings/{building_id}/floors"): Rule(
        BUILDER, "building the site tree", example=Example({"name": "f-{uniq}", "level": 2})
    ),
    ("GET", "/floors/{floor_id}/rooms"): Rule(STAFF, "the site tree"),
    ("POST", "/floors/{floor_id}/rooms"): Rule(
        BUILDER, "building the site tree", example=Example({"name": "r-{uniq}"})
    ),
    ("GET", "/tenants"): Rule(MONEY, "names and phone numbers of the people who pay"),
    ("POST", "/tenants"): Rule(
        MANAGER,
        "tenants sign with the manager",
        example=Example({"name": "t-{uniq}", "room_id": "{room}", "org_id": "{org}"}),
    ),
    # devices
    ("GET", "/gateways"): Rule(BUILDER, "commissioning"),
    ("POST", "/gateways"): Rule(
        BUILDER,
        "commissioning",
        example=Example({"device_id": "gw-{uniq}", "project_id": "{project}", "org_id": "{org}"}),
    ),
    ("GET", "/gateways/{gateway_id}/keys"): Rule(BUILDER, "key ids and dates, never the secrets"),
    ("POST", "/gateways/{gateway_id}/keys"): Rule(
        BUILDER,
        "commissioning: a gateway's new signing key, installed on it by the installer",
        example=Example({"overlap_s": 3600}),
    ),
    ("POST", "/gateways/{gateway_id}/keys/end-overlap"): Rule(
        BUILDER, "retire the old keys once the gateway uses the new one", example=Example({"force": True})
    ),
    ("POST", "/projects/{project_id}/provisioning-codes"): Rule(
        BUILDER,
        "commissioning: a one-time code for `meterflow edge register`",
        example=Example({"ttl_s": 3600}),
    ),
    ("POST", "/gateways/register"): Rule(
        PUBLIC,
        "a gateway enrols with a one-time provisioning code (the code is checked and throttled, not a token)",
        example=Example({"code": "no-such-code", "gateway": {"id": "gw-x"}, "meters": []}),
    ),
    ("PUT", "/meters/{meter_id}/room"): Rule(
        MANAGER, "which room a meter supplies decides who pays", example=Example({"room_id": "{room}"})
    ),
    ("GET", "/meters"): Rule(STAFF, "which meter is where (finance: statement lines name meters)"),
    ("POST", "/meters"): Rule(
        BUILDER,
        "commissioning",
        example=Example({"gateway_id": "{gateway}", "device_id": "m-{uniq}", "address": "7"}),
    ),
    ("GET", "/meters/{meter_id}"): Rule(STAFF, "which meter is where"),
    ("GET", "/meters/{meter_id}/readings"): Rule(
        STAFF, "did the meter read, and what (register values, no money)"
    ),
    ("POST", "/meters/{meter_id}/replace"): Rule(
        BUILDER,
        f"swap a meter; the money left on a local-prepay meter: {_READING_FIGURE}",
        example=Example(
            {"new_device_id": "m-{uniq}", "new_address": "9"}, path={"meter_id": "meter_replace"}
        ),
    ),
    ("PUT", "/meters/{meter_id}/max-rate"): Rule(
        MANAGER,
        "what a supply can deliver bounds what it bills (docs/billing.md §4)",
        example=Example({"max_rate_per_hour": "20", "reason": "扩容"}),
    ),
    ("POST", "/meters/{meter_id}/closing-figure"): Rule(
        MONEY,
        f"the money left on a replaced local-prepay meter: {_READING_FIGURE}",
        example=Example({"remaining_fen": 100, "reason": "表内实余"}, path={"meter_id": "meter_replaced"}),
    ),
    # accounts
    ("GET", "/accounts"): Rule(HOLDERS, "balances are finances", own=True),
    ("GET", "/balances"): Rule(HOLDERS, "balances are finances", own=True),
    ("POST", "/accounts"): Rule(
        MANAGER,
        "tenants sign with the manager",
        example=Example({"project_id": "{project}", "number": "n-{uniq}"}),
    ),
    ("GET", "/accounts/{account_id}"): Rule(HOLDERS, "balances are finances", own=True),
    ("GET", "/accounts/{account_id}/ledger"): Rule(HOLDERS, "the statement", own=True),
    ("POST", "/accounts/{account_id}/recharge"): Rule(
        MONEY,
        "the cash desk and bank transfers (four eyes above the approval limit)",
        example=Example({"amount_fen": 100, "receipt_no": "SJ-{uniq}"}),
    ),
    ("POST", "/accounts/{account_id}/refund"): Rule(
        MONEY,
        "pays money out",
        example=Example({"amount_fen": 1, "reason": "退费", "request_id": "rf-{uniq}"}),
    ),
    ("POST", "/accounts/{account_id}/adjust"): Rule(
        MONEY,
        "manual correction",
        example=Example({"amount_fen": 1, "reason": "更正", "request_id": "ad-{uniq}"}),
    ),
    ("POST", "/accounts/{account_id}/close"): Rule(
        MANAGER,
        f"tenants leave through the manager; money left on local-prepay meters: {_READING_FIGURE}",
        example=Example({"reason": "退租"}, path={"account_id": "account_close"}),
    ),
    ("POST", "/accounts/{account_id}/meters"): Rule(
        MANAGER, "who pays for a meter", example=Example({"meter_id": "{meter_spare}"})
    ),
    ("PUT", "/accounts/{account_id}/protected"): Rule(
        MANAGER, "保电 overrides the arrears policy", example=Example({"protected": False})
    ),
    ("GET", "/projects/{project_id}/cashier-report"): Rule(
        MONEY, "the day's takings, receipt by receipt", example=Example(query={"date": "2026-11-23"})
    ),
    ("POST", "/ledger/reverse"): Rule(
        MONEY, "corrects a transaction", example=Example({"key": "{txn}", "reason": "误操作"})
    ),
    # tariffs
    ("GET", "/tariffs"): Rule(MONEY, "prices"),
    ("POST", "/tariffs"): Rule(
        MONEY, "prices", example=Example({"name": "t-{uniq}", "kind": "flat", "org_id": "{org}"})
    ),
    ("GET", "/tariffs/{tariff_id}/versions"): Rule(MONEY, "prices"),
    ("POST", "/tariffs/{tariff_id}/versions"): Rule(
        MONEY,
        "prices",
        example=Example(
            {"effective_from": "2030-01-01T00:00:00+08:00", "spec": {"kind": "flat", "price": "0.6"}}
        ),
    ),
    # notifications
    ("GET", "/projects/{project_id}/notify-settings"): Rule(STAFF, "how the site's notices go out"),
    ("PUT", "/projects/{project_id}/notify-settings"): Rule(
        MANAGER,
        "channels, SMS signature and templates are the site's voice",
        example=Example({"channels": ["sms_aliyun", "log"], "sms_sign": "阳光物业"}),
    ),
    ("PUT", "/accounts/{account_id}/contact"): Rule(
        MONEY,
        "tenants' phone numbers, kept by those who keep the accounts",
        example=Example({"phone": "13800000000"}),
    ),
    ("GET", "/auth/me/notify-contact"): Rule(STAFF, "their own phone and manager notices"),
    ("PUT", "/auth/me/notify-contact"): Rule(
        STAFF, "staff choose which manager notices reach their own phone (not platform admins)"
    ),
    ("GET", "/users/{user_id}/notify-contact"): Rule(MANAGER, "who of the staff hears manager notices"),
    ("PUT", "/users/{user_id}/notify-contact"): Rule(
        MANAGER,
        "managers set the staff's phones and manager notices",
        example=Example({"phone": "13800000008", "lang": "en", "notices": ["holds_waiting", "topup_failed"]}),
    ),
    ("POST", "/tenant/accounts/{account_id}/subscriptions"): Rule(
        PUBLIC, _PAYER, example=Example({"template_id": "TPL-1", "app": "miniprogram"})
    ),
    ("PUT", "/projects/{project_id}/tariffs"): Rule(
        MANAGER, "which prices a site bills", example=Example({"electric_tariff_id": "{tariff}"})
    ),
    # operations
    ("POST", "/meters/{meter_id}/commands"): Rule(
        MANAGER, "cutting supply is the manager's call", example=Example({"action": "trip"})
    ),
    ("GET", "/meters/{meter_id}/commands"): Rule(STAFF, "did the meter obey"),
    ("GET", "/meters/{meter_id}/state"): Rule(STAFF, "supply state"),
    ("GET", "/alarms"): Rule(STAFF, "installers see device alarms only (money alarms carry amounts)"),
    ("POST", "/alarms/{alarm_id}/acknowledge"): Rule(
        STAFF, "whoever may see an alarm may close it (installers: device alarms)", example=Example({})
    ),
    ("POST", "/alarms/{alarm_id}/assign"): Rule(
        STAFF,
        "whoever may see an alarm may hand it to a colleague who may see it too",
        example=Example({"user_id": None}),
    ),
    ("GET", "/dead-letters"): Rule(BUILDER, "messages a gateway sent that could not be applied"),
    # calendar
    ("GET", "/holidays"): Rule(EVERYONE, "public calendar", example=Example(query={"year": 2026})),
    ("PUT", "/holidays/{day}"): Rule(
        ADMIN,
        "one calendar for every organisation",
        platform=True,
        example=Example({"kind": "holiday", "name": "厂休"}),
    ),
    # held readings
    ("GET", "/holds"): Rule(MANAGER, "readings held from billing"),
    ("POST", "/holds/{hold_id}/resolve"): Rule(
        MANAGER,
        "decides whether a reading is billed",
        example=Example({"action": "discard", "reason": "核对"}),
    ),
    # approvals (four eyes)
    ("GET", "/approvals"): Rule(MONEY, "money waiting for a second person"),
    ("GET", "/approvals/{approval_id}"): Rule(MONEY, "money waiting for a second person"),
    ("POST", "/approvals/{approval_id}/approve"): Rule(
        MONEY, "a second person, never the requester", example=Example({"reason": "核对无误"})
    ),
    ("POST", "/approvals/{approval_id}/reject"): Rule(
        MONEY,
        "a second person, never the requester",
        example=Example({"reason": "数字不对"}, path={"approval_id": "approval_reject"}),
    ),
    # tenants' payments (docs/payments.md)
    ("POST", "/pay/wechat/notify"): Rule(
        PUBLIC, "WeChat Pay's notifications: the platform's signature is checked, not a user's token"
    ),
    ("POST", "/pay/wechat/refund-notify"): Rule(
        PUBLIC, "WeChat Pay's refund notifications: the platform's signature is checked"
    ),
    ("GET", "/payments/orders"): Rule(MONEY, "money received from tenants' phones"),
    ("GET", "/payments/conflicts"): Rule(MONEY, "the daily trade bill's differences for finance"),
    ("POST", "/payments/conflicts/{conflict_id}/resolve"): Rule(
        MONEY, "finance closes a trade bill difference, with its reason (audited)",
        example=Example({"reason": "已核对，线下退款"}),
    ),
    ("POST", "/accounts/{account_id}/wechat-refund"): Rule(MONEY, "pays money out"),
    ("GET", "/rooms/{room_id}/bind-code"): Rule(MANAGER, "who may bind a phone to a room's accounts"),
    # the tenant API: public for staff tokens; each route but login checks a WeChat payer's token
    ("POST", "/tenant/login"): Rule(
        PUBLIC, _PAYER_LOGIN, example=Example({"code": "no-such-code", "app": "miniprogram"})
    ),
    ("POST", "/tenant/bindings/qr"): Rule(PUBLIC, _PAYER, example=Example({"code": "r1.1.1.x"})),
    ("POST", "/tenant/bindings/phone"): Rule(
        PUBLIC, _PAYER, example=Example({"account_number": "301-E", "phone": "13800000000"})
    ),
    ("DELETE", "/tenant/accounts/{account_id}/binding"): Rule(PUBLIC, _PAYER),
    ("GET", "/tenant/accounts"): Rule(PUBLIC, _PAYER),
    ("GET", "/tenant/accounts/{account_id}"): Rule(PUBLIC, _PAYER),
    ("GET", "/tenant/accounts/{account_id}/usage"): Rule(PUBLIC, _PAYER),
    ("GET", "/tenant/accounts/{account_id}/statement"): Rule(PUBLIC, _PAYER),
    ("GET", "/tenant/accounts/{account_id}/orders"): Rule(PUBLIC, _PAYER),
    ("POST", "/tenant/accounts/{account_id}/orders"): Rule(
        PUBLIC, _PAYER, example=Example({"amount_fen": 5000})
    ),
    # the tenant H5 page (cloud/tenant_web): pages are public, what they show comes from the tenant API
    ("GET", "/h5/"): Rule(PUBLIC, "the tenant page's shell; its figures come from the tenant API"),
    ("GET", "/h5/login"): Rule(PUBLIC, "off to the official account's web authorisation"),
    ("GET", "/h5/auth"): Rule(PUBLIC, "WeChat's authorisation code, checked with WeChat: a payer cookie"),
    ("POST", "/h5/logout"): Rule(PUBLIC, "drops the payer cookie"),
    ("GET", "/h5/{name}"): Rule(PUBLIC, "the page's own script and style sheet"),
}


def rule_for(method: str, path: str) -> Rule | None:
    """The rule of ``method path`` (the route's template, with or without the API prefix)."""
    relative = path.removeprefix(API_PREFIX) or "/"
    return POLICY.get(("GET" if method.upper() == "HEAD" else method.upper(), relative))


def authorize(request: Request, uow: Db, at: Now, credentials: Bearer) -> Principal | None:
    """The caller, admitted by the route's rule; None on a public route. 401 without a valid token,
    403 for a role the rule does not admit or a route without a rule."""
    route = request.scope.get("route")
    path: str = getattr(route, "path_format", request.url.path)
    rule = rule_for(request.method, path)
    if rule is None:
        log.error(
            "no access rule for %s %s: refused to everyone (add it to cloud/api/access.py)",
            request.method,
            path,
        )
        raise PermissionDenied(f"{request.method} {path} has no access rule")
    if rule.public:
        return None
    principal = authenticate(request, uow, at, credentials)
    if not rule.admits(principal):
        log.info("refused %s %s to %s (%s)", request.method, path, principal.username, principal.role)
        if rule.platform and principal.role in rule.roles:
            raise PermissionDenied(f"only platform administrators may {request.method} {path}")
        raise PermissionDenied(f"role {principal.role} may not {request.method} {path}")
    return principal


def _caller(principal: Annotated[Principal | None, Depends(authorize)]) -> Principal:
    if principal is None:  # a public route's handler asked who is calling
        raise AuthError("this route takes no caller")
    return principal


Caller = Annotated[Principal, Depends(_caller)]
"""The authenticated caller of a route, admitted by its rule in :data:`POLICY`."""
