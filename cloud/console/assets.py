"""Front-end files the console serves: htmx and ECharts from ``node_modules`` (installed by ``npm ci``
from ``package-lock.json``), and our own stylesheet.

Only the names in :data:`ASSETS` are served (no directory is exposed, so no path a client types can
reach another file). When ``npm ci`` has not run, :func:`missing` names what is absent and every page
says so in a banner instead of failing: the console still works without the live parts and charts.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, PlainTextResponse, Response

__all__ = ["ASSETS", "HERE", "NODE_MODULES", "missing", "router"]

HERE = Path(__file__).resolve().parent
NODE_MODULES = HERE / "node_modules"

ASSETS: dict[str, Path] = {
    "htmx.min.js": NODE_MODULES / "htmx.org" / "dist" / "htmx.min.js",
    "echarts.min.js": NODE_MODULES / "echarts" / "dist" / "echarts.min.js",
    "console.css": HERE / "static" / "console.css",
    "console.js": HERE / "static" / "console.js",
}
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}

router = APIRouter()


def missing() -> list[str]:
    """The npm files that are not installed (empty when ``npm ci`` has run)."""
    return [name for name, path in ASSETS.items() if path.is_relative_to(NODE_MODULES) and not path.is_file()]


@router.get("/assets/{name}", include_in_schema=False)
def asset(name: str) -> Response:
    path = ASSETS.get(name)
    if path is None or not path.is_file():
        return PlainTextResponse(f"asset {name[:64]} is not installed (run make install)", status_code=404)
    return FileResponse(path, media_type=_TYPES[path.suffix], headers={"Cache-Control": "max-age=3600"})
