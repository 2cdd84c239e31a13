"""The site file: lines and the meters on them, validated with pydantic.

Every table forbids unknown keys, so a typo is reported with its path (``lines.0.meters.2.adress``)
instead of being silently ignored. :func:`load_site` turns every problem into a
:class:`~firmware_sim.errors.SimConfigError` whose message names the key; see docs/simulator.md for
the format and deploy/sim/site.toml for an example.
"""

from __future__ import annotations

import os
import tomllib
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from firmware_sim.clock import SimClock
from firmware_sim.errors import SimConfigError
from firmware_sim.line import SimLine
from firmware_sim.meters import (
    Adf300lSim,
    CircuitSpec,
    Ddsy1352Sim,
    Dtsy1352Sim,
    PrepaidSettings,
    SimMeter,
    WaterValveSim,
)
from firmware_sim.profile import PROFILE_SHAPES, TouSchedule, default_tou
from firmware_sim.quirks import Quirks

__all__ = [
    "CircuitConfig",
    "FaultsConfig",
    "LineConfig",
    "MeterConfig",
    "PrepaidConfig",
    "QuirksConfig",
    "SiteConfig",
    "build_line",
    "build_meter",
    "build_site",
    "format_validation_error",
    "load_site",
    "parse_site",
]

Model = Literal["ddsy1352", "dtsy1352", "adf300l", "water_valve"]
Protocol = Literal["dlt645", "modbus", "cjt188"]
Profile = Annotated[str, Field(description="one of " + ", ".join(sorted(PROFILE_SHAPES)))]
_PROTOCOLS: dict[str, tuple[str, ...]] = {
    "ddsy1352": ("dlt645", "modbus"),
    "dtsy1352": ("dlt645", "modbus"),
    "adf300l": ("modbus",),
    "water_valve": ("cjt188",),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_profile(value: str) -> str:
    if value not in PROFILE_SHAPES:
        raise ValueError(f"unknown profile {value!r}; known: {', '.join(sorted(PROFILE_SHAPES))}")
    return value


class PrepaidConfig(_Strict):
    """Local-prepay mode: the meter keeps the balance (integer fen) and trips itself at zero."""

    price_fen_per_kwh: Decimal = Field(Decimal(60), gt=0)
    balance_fen: int = 10_000
    purchase_count: int = Field(0, ge=0)
    alarm1_fen: int = Field(2_000, ge=0)
    alarm2_fen: int = Field(500, ge=0)
    overdraft_limit_fen: int = Field(0, ge=0)
    hoarding_limit_fen: int = Field(99_999_999, gt=0)

    def settings(self) -> PrepaidSettings:
        return PrepaidSettings(**self.model_dump())


class FaultsConfig(_Strict):
    no_reply: bool = False
    bad_checksum: bool = False
    slow_reply_s: float = Field(0.0, ge=0)
    garbage: bool = False
    relay_stuck: bool = False


class QuirksConfig(_Strict):
    """Departures from the standard, off by default (see :class:`firmware_sim.quirks.Quirks`)."""

    digit_wildcards: bool = False
    echo_address: bool = False
    error_for_others: bool = False
    ignore_address: bool = False
    clock: Literal["ok", "zero", "binary"] = "ok"
    fe_preamble: int | None = Field(None, ge=0, le=16)
    turnaround_ms: float | None = Field(None, ge=0)
    time_sync_order: Literal["standard", "reversed"] = "standard"

    def quirks(self) -> Quirks:
        return Quirks(**self.model_dump())


class CircuitConfig(_Strict):
    """One circuit of an ADF300L (or the only circuit of a single meter)."""

    base_w: float = Field(400.0, ge=0)
    profile: str = "residential"
    noise: float = Field(0.3, ge=0, lt=1)
    initial_kwh: Decimal = Field(Decimal(0), ge=0)
    prepaid: PrepaidConfig | None = None

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        return _check_profile(value)

    def spec(self) -> CircuitSpec:
        return CircuitSpec(
            base_w=self.base_w,
            profile=self.profile,
            noise=self.noise,
            initial_kwh=self.initial_kwh,
            prepaid=self.prepaid.settings() if self.prepaid else None,
        )


class MeterConfig(_Strict):
    """One meter: model, protocol, address (Modbus: the unit id), consumption, prepay, faults."""

    model: Model
    protocol: Protocol | None = None  # default: dlt645 for DDSY/DTSY, modbus for ADF300L, cjt188 water
    address: str
    seed: int | None = None
    base_w: float = Field(400.0, ge=0)  # electricity: mean load in W; water: use base_lph
    base_lph: float = Field(12.0, ge=0)
    profile: str | None = None
    noise: float | None = Field(None, ge=0, lt=1)
    initial_kwh: Decimal = Field(Decimal(0), ge=0)
    initial_m3: Decimal = Field(Decimal(0), ge=0)
    circuits: int | list[CircuitConfig] | None = None  # ADF300L only
    prepaid: PrepaidConfig | None = None
    close_permit_only: bool = False
    auto_press_after_s: float | None = Field(None, ge=0)
    password: str = Field("000000", pattern=r"^\d{6}$")
    password_level: int = Field(2, ge=0, le=9)
    preamble: int | None = Field(None, ge=0, le=4)
    clock_offset_s: float = 0.0
    di_order: Literal["standard", "swapped", "echo"] = "standard"
    battery_low: bool = False
    faults: FaultsConfig = FaultsConfig()
    quirks: QuirksConfig = QuirksConfig()

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str | None) -> str | None:
        return None if value is None else _check_profile(value)

    @field_validator("address", mode="before")
    @classmethod
    def _address_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _consistent(self) -> MeterConfig:
        allowed = _PROTOCOLS[self.model]
        protocol = self.protocol or allowed[0]
        if protocol not in allowed:
            raise ValueError(f"protocol: {self.model} speaks {' or '.join(allowed)}, not {protocol}")
        address = self.address
        if protocol == "dlt645" and not (len(address) == 12 and address.isdigit()):
            raise ValueError(f"address: a DL/T 645 address is 12 digits, got {address!r}")
        if protocol == "cjt188" and not (len(address) == 14 and address.isdigit()):
            raise ValueError(f"address: a CJ/T 188 address is 14 digits, got {address!r}")
        if protocol == "modbus" and not (address.isdigit() and 1 <= int(address) <= 247):
            raise ValueError(f"address: a Modbus unit id is 1..247, got {address!r}")
        if self.circuits is not None and self.model != "adf300l":
            raise ValueError("circuits: only an adf300l has several circuits")
        return self

    @property
    def effective_protocol(self) -> str:
        return self.protocol or _PROTOCOLS[self.model][0]


class LineConfig(_Strict):
    """One RS-485 line: serial settings, timing, where it is served, its meters."""

    name: str | None = None
    baudrate: int = Field(2400, gt=0)
    parity: Literal["N", "E", "O"] = "E"
    bytesize: Literal[7, 8] = 8
    stopbits: Literal[1, 2] = 1
    turnaround_ms: float = Field(20.0, ge=0)
    listen_gap_ms: float | None = Field(None, ge=0)
    pty: bool = True
    tcp_port: int | None = Field(None, ge=0, le=65535)
    host: str = "127.0.0.1"
    meters: list[MeterConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _served(self) -> LineConfig:
        if not self.pty and self.tcp_port is None:
            raise ValueError("pty: a line needs pty = true or a tcp_port")
        seen: set[tuple[str, str]] = set()
        for meter in self.meters:
            if meter.effective_protocol == "modbus":
                key = ("modbus", str(int(meter.address)))
            else:
                key = (meter.effective_protocol, meter.address)
            if key in seen:
                raise ValueError(f"meters: two {key[0]} meters share address {meter.address}")
            seen.add(key)
        return self


class SiteConfig(_Strict):
    """A whole simulated site; ``time_scale`` and ``start`` are shared by all its lines."""

    name: str = "site"
    seed: int = 0
    time_scale: float = Field(1.0, gt=0)
    start: datetime | None = None  # simulated local time at start-up (default: now)
    tou: list[tuple[str, Annotated[int, Field(ge=1, le=4)]]] | None = None
    lines: list[LineConfig] = Field(min_length=1)

    @field_validator("tou")
    @classmethod
    def _tou(cls, value: list[tuple[str, int]] | None) -> list[tuple[str, int]] | None:
        if value is not None:
            TouSchedule.parse(value)  # raises ValueError naming the bad entry
        return value

    def tou_schedule(self) -> TouSchedule:
        return default_tou() if self.tou is None else TouSchedule.parse(self.tou)


# ------------------------------------------------------------------ loading
def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem, each naming the key path, e.g. ``lines.0.meters.1.adress``."""
    parts = []
    for error in exc.errors():
        loc = ".".join(str(p) for p in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"  {loc}: {message}")
    return f"{source}: invalid simulator site configuration\n" + "\n".join(parts)


def parse_site(data: dict[str, Any], source: str = "<site>") -> SiteConfig:
    try:
        return SiteConfig.model_validate(data)
    except ValidationError as exc:
        raise SimConfigError(format_validation_error(exc, source)) from None


def load_site(path: str | os.PathLike[str]) -> SiteConfig:
    """Read and validate a site TOML file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SimConfigError(f"{path}: cannot read site file: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SimConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_site(data, str(path))


# ------------------------------------------------------------------ building
def build_meter(cfg: MeterConfig, tou: TouSchedule | None = None) -> SimMeter:
    protocol = cfg.effective_protocol
    meter: SimMeter
    if cfg.model == "water_valve":
        meter = WaterValveSim(
            cfg.address,
            base_lph=cfg.base_lph,
            profile=cfg.profile or "water",
            noise=0.5 if cfg.noise is None else cfg.noise,
            initial_m3=cfg.initial_m3,
            di_order=cfg.di_order,
            battery_low=cfg.battery_low,
            preamble=2 if cfg.preamble is None else cfg.preamble,
            seed=cfg.seed,
            clock_offset_s=cfg.clock_offset_s,
            quirks=cfg.quirks.quirks(),
        )
    else:
        if isinstance(cfg.circuits, list):
            circuits: list[CircuitSpec] | int | None = [c.spec() for c in cfg.circuits]
        elif cfg.circuits is None and cfg.model != "adf300l":
            circuits = [
                CircuitConfig(
                    base_w=cfg.base_w,
                    profile=cfg.profile or "residential",
                    noise=0.3 if cfg.noise is None else cfg.noise,
                    initial_kwh=cfg.initial_kwh,
                    prepaid=cfg.prepaid,
                ).spec()
            ]
        else:
            count = cfg.circuits if isinstance(cfg.circuits, int) else 4
            one = CircuitConfig(
                base_w=cfg.base_w,
                profile=cfg.profile or "residential",
                noise=0.3 if cfg.noise is None else cfg.noise,
                initial_kwh=cfg.initial_kwh,
                prepaid=cfg.prepaid,
            ).spec()
            circuits = [one] * count
        cls = {"ddsy1352": Ddsy1352Sim, "dtsy1352": Dtsy1352Sim, "adf300l": Adf300lSim}[cfg.model]
        meter = cls(
            cfg.address,
            protocol=protocol,
            circuits=circuits,
            tou=tou,
            close_permit_only=cfg.close_permit_only,
            auto_press_after_s=cfg.auto_press_after_s,
            password=cfg.password,
            password_level=cfg.password_level,
            preamble=4 if cfg.preamble is None else cfg.preamble,
            seed=cfg.seed,
            clock_offset_s=cfg.clock_offset_s,
            quirks=cfg.quirks.quirks(),
        )
    meter.faults.set(**cfg.faults.model_dump())
    return meter


def build_line(
    cfg: LineConfig, site: SiteConfig, clock: SimClock | None = None, *, index: int = 0
) -> SimLine:
    """A :class:`SimLine` with its meters; errors name the line and meter that caused them."""
    tou = site.tou_schedule()
    meters: list[SimMeter] = []
    name = cfg.name or f"line{index}"
    for i, meter_cfg in enumerate(cfg.meters):
        try:
            meters.append(build_meter(meter_cfg, tou))
        except ValueError as exc:
            raise SimConfigError(
                f"lines.{index}.meters.{i} ({meter_cfg.model} {meter_cfg.address}): {exc}"
            ) from exc
    return SimLine(
        cfg.baudrate,
        cfg.parity,
        meters,
        turnaround_s=cfg.turnaround_ms / 1000,
        seed=site.seed,
        bytesize=cfg.bytesize,
        stopbits=cfg.stopbits,
        listen_gap_s=None if cfg.listen_gap_ms is None else cfg.listen_gap_ms / 1000,
        clock=clock or SimClock(site.time_scale, start=site.start),
        name=name,
    )


def build_site(site: SiteConfig) -> list[SimLine]:
    """Every line of the site, sharing one simulated clock."""
    clock = SimClock(site.time_scale, start=site.start)
    return [build_line(cfg, site, clock, index=i) for i, cfg in enumerate(site.lines)]
