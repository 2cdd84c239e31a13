"""The role sets: one name, one meaning, for every layer that asks "is this user one of ...".

Roles (:class:`cloud.models.Role`) follow the jobs of a property company: the *manager* runs the sites,
*finance* handles money, the *installer* commissions devices and sees no finances, a *tenant* sees their
own accounts; an *admin* may do everything in the organisation (without an organisation: the platform).
The API's table of routes (:mod:`cloud.api.access`), the console and the services all use these sets,
so a set means the same everywhere; a finer decision is a new set here, not a local list.
"""

from __future__ import annotations

from cloud.models.core import Role

__all__ = ["ADMIN", "BUILDER", "EVERYONE", "HOLDERS", "MANAGER", "MONEY", "PUBLIC", "STAFF"]

ADMIN = frozenset({Role.ADMIN})
"""Administrators: users, and (without an organisation) the platform."""
MANAGER = frozenset({Role.ADMIN, Role.MANAGER})
"""Run the sites: projects, tenants, accounts, remote control, held readings, other staff's contacts."""
MONEY = frozenset({Role.ADMIN, Role.MANAGER, Role.FINANCE})
"""Handle money: recharge, refund, adjust, reverse, tariffs, approvals, tenants' details."""
BUILDER = frozenset({Role.ADMIN, Role.MANAGER, Role.INSTALLER})
"""Commission devices: buildings, floors, rooms, gateways, meters, replacements, dead letters."""
STAFF = frozenset({Role.ADMIN, Role.MANAGER, Role.FINANCE, Role.INSTALLER})
"""Everyone of the property company: the site tree, meters and their state, alarms; the console."""
HOLDERS = frozenset({Role.ADMIN, Role.MANAGER, Role.FINANCE, Role.TENANT})
"""Read accounts, balances and statements (a tenant only their own); never installers."""
EVERYONE = frozenset(Role)
"""Any signed-in user."""
PUBLIC: frozenset[Role] = frozenset()
"""No token needed (logging in)."""
