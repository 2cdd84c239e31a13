"""The tenant H5 page: what a tenant opens from the official account's menu (or a normal browser, in
tests and the demo) to see their balance, usage and statement, and to recharge with WeChat Pay.

Server-rendered (Jinja2) with one small script of ours (no CDN, no framework); every figure comes
from the tenant API (``/api/v1/tenant/…``), the same one the mini-program calls. See
:mod:`cloud.tenant_web.pages` for the routes and how the payer's token is kept.
"""
