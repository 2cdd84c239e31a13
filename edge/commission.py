"""Commissioning a site once: the scan's report file, registration with the cloud, the cloud's meter list.

The cloud is the one source of truth for a commissioned site's meters (docs/installer.md,
"Commissioning with the cloud"). On site:

1. ``meterflow edge scan --report site.json --line NAME`` scans a line and writes what it found
   (protocol, address, model guess, line settings, a first reading, relay tests when asked) into a
   commissioning report; scanning several lines adds one entry per line name;
2. ``meterflow edge register --cloud URL --code CODE --report site.json`` sends the gateway's id and
   the report's meters to the cloud with a one-time provisioning code; the cloud creates the gateway
   and the meters (unassigned), and returns the gateway's signing key, stored in ``keys.json``;
3. the manager assigns meters to rooms; the gateway gets the assigned meters and their poll plans in
   its signed config (:class:`protocol.contract.PlannedMeter`) and polls them without a restart
   (:func:`merge_planned`).

Which wins when edge.toml also lists meters: **edge.toml**. A meter in the file is polled as the file
says; a planned meter with the same id, or the same protocol address on the same line, is skipped
(logged), and a planned meter on a line the file does not name is skipped (logged). A site without a
cloud keeps its hand-written list; a commissioned site keeps edge.toml's ``meters`` empty.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from edge.config import LineConfig, MeterConfig
from edge.errors import ConfigError, EdgeError
from protocol.contract import PlannedMeter

__all__ = [
    "REPORT_VERSION",
    "RegisterError",
    "Registered",
    "ReportMeter",
    "merge_planned",
    "meter_id",
    "post_registration",
    "read_report",
    "report_meters",
    "write_line_report",
]

log = logging.getLogger(__name__)

REPORT_VERSION = 1
MAX_REPORT_BYTES = 4 * 1024 * 1024


class RegisterError(EdgeError):
    """The cloud refused the registration, or could not be reached."""


def meter_id(line: str, address: str, circuit: int | None = None) -> str:
    """The id a scanned meter gets: unique on the gateway (a Modbus unit id repeats across lines)."""
    return f"{line}.{address}" + (f".c{circuit}" if circuit is not None else "")


# -- the report file ------------------------------------------------------------------------------


def read_report(path: Path) -> dict[str, Any]:
    """The report in ``path``; an empty one when the file does not exist yet."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {"v": REPORT_VERSION, "lines": []}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the commissioning report: {exc}") from exc
    if len(raw) > MAX_REPORT_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_REPORT_BYTES} bytes: not a commissioning report")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{path}: not a commissioning report (bad JSON: {exc})") from exc
    if (
        not isinstance(data, dict)
        or data.get("v") != REPORT_VERSION
        or not isinstance(data.get("lines"), list)
    ):
        raise ConfigError(f'{path}: not a commissioning report (want {{"v": 1, "lines": [...]}})')
    return data


def write_line_report(path: Path, line: Mapping[str, Any]) -> None:
    """Put one line's scan into the report (replacing an earlier scan of the same line name), atomically."""
    report = read_report(path)
    report["lines"] = [entry for entry in report["lines"] if entry.get("name") != line["name"]] + [dict(line)]
    report["updated_at"] = datetime.now(UTC).isoformat()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass(frozen=True)
class ReportMeter:
    id: str
    line: str
    protocol: str
    address: str
    model: str
    circuit: int | None


def report_meters(report: Mapping[str, Any], lines: Iterable[str] | None = None) -> list[ReportMeter]:
    """The meters of a report; ``lines``: the line names edge.toml has (others are refused)."""
    known = set(lines) if lines is not None else None
    out: list[ReportMeter] = []
    for entry in report["lines"]:
        name = str(entry.get("name", ""))
        if known is not None and name not in known:
            raise ConfigError(
                f"the report has line {name!r}, which edge.toml does not name: add [[lines]] name = "
                f"{name!r} with its port, or scan again with --line set to one of {sorted(known)}"
            )
        for meter in entry.get("meters", []):
            out.append(
                ReportMeter(
                    id=str(meter["id"]),
                    line=name,
                    protocol=str(meter["protocol"]),
                    address=str(meter["address"]),
                    model=str(meter.get("model") or ""),
                    circuit=meter.get("circuit"),
                )
            )
    return out


# -- registration ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Registered:
    gateway: str
    kid: str
    secret: str
    meters: int


def post_registration(
    cloud: str,
    code: str,
    gateway: str,
    meters: Sequence[ReportMeter],
    *,
    name: str = "",
    timeout_s: float = 30.0,
) -> Registered:
    """``POST /api/v1/gateways/register``; the signing key it returns (shown this once)."""
    url = cloud.rstrip("/") + "/api/v1/gateways/register"
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--cloud must be an http:// or https:// address, got {cloud!r}")
    body = {
        "code": code,
        "gateway": {"id": gateway, "name": name},
        "meters": [
            {
                "id": m.id,
                "line": m.line,
                "protocol": m.protocol,
                "address": m.address,
                "model": m.model,
                "circuit": m.circuit,
                "kind": "water" if m.protocol == "cjt188" else "electric",
            }
            for m in meters
        ],
    }
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            answer = json.loads(response.read(1024 * 1024))
    except urllib.error.HTTPError as exc:
        raise RegisterError(f"the cloud refused the registration ({exc.code}): {_detail(exc)}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise RegisterError(f"cannot reach the cloud at {cloud}: {exc}") from None
    try:
        return Registered(
            gateway=str(answer["device_id"]),
            kid=str(answer.get("signing_kid", "k1")),
            secret=str(answer["signing_key"]),
            meters=len(answer.get("meters", [])),
        )
    except (KeyError, TypeError) as exc:
        raise RegisterError(f"the cloud's answer lacks {exc}") from None


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        data = json.loads(exc.read(64 * 1024))
    except (ValueError, OSError):
        return exc.reason or ""
    detail = data.get("detail") if isinstance(data, dict) else None
    if isinstance(detail, list):  # a validation error: name the fields
        return "; ".join(f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}" for d in detail[:5])
    return str(detail or data)[:300]


# -- the cloud's meter list on the gateway --------------------------------------------------------


def merge_planned(
    lines: Sequence[LineConfig], planned: Sequence[PlannedMeter] | None
) -> dict[str, list[MeterConfig]]:
    """Each line's meters: edge.toml's, then the cloud's planned ones that do not clash (see the
    module docstring for which wins). Invalid planned meters are logged and skipped."""
    out = {line.name: list(line.meters) for line in lines}
    if not planned:
        return out
    ids = {m.id for line in lines for m in line.meters}
    addresses = {(line.name, m.protocol, m.address, m.circuit) for line in lines for m in line.meters}
    for plan in planned:
        if plan.line not in out:
            log.warning(
                "cloud plans meter %s on line %s, which edge.toml does not name: skipped", plan.id, plan.line
            )
            continue
        if plan.id in ids or (plan.line, plan.protocol, plan.address, plan.circuit) in addresses:
            log.warning(
                "cloud plans meter %s, which edge.toml lists already: edge.toml's entry wins", plan.id
            )
            continue
        try:
            meter = msgspec.convert(
                {
                    "id": plan.id,
                    "protocol": plan.protocol,
                    "address": plan.address,
                    "model": plan.model,
                    "circuit": plan.circuit,
                    "read": [str(q) for q in plan.read],
                    "interval_s": float(plan.interval_s),
                },
                MeterConfig,
            )
        except msgspec.ValidationError as exc:
            log.warning("cloud plans meter %s that the gateway cannot poll: %s", plan.id, exc)
            continue
        ids.add(plan.id)
        addresses.add((plan.line, plan.protocol, plan.address, plan.circuit))
        out[plan.line].append(meter)
    return out
