"""The property manager's console: server-rendered pages (Jinja2) made live with HTMX, under ``/console``.

The console is a second face of the same service, not a second service: every page and action is
checked against the API's role table (:mod:`cloud.api.access`, through :mod:`cloud.console.guard`)
and calls the same services as the REST API (:mod:`cloud.services`), which scope every row to the
caller's organisation. Sessions are the API's signed tokens carried in an HttpOnly cookie, with a
CSRF token bound to the session on every form and HTMX POST (:mod:`cloud.console.session`).
Front-end packages (htmx, ECharts) come from the npm registry into ``cloud/console/node_modules``
(``make install`` runs ``npm ci``) and are served by the app (:mod:`cloud.console.assets`).
"""

from cloud.console.routes import build_router

__all__ = ["build_router"]
