"""Simulated meters that speak the real protocols over real serial links (pty, TCP).

The meters are the server role of the same sans-IO codecs the gateway uses (:mod:`protocol`);
:mod:`firmware_sim.line` puts several of them on one RS-485 line with real byte timing, and
:mod:`firmware_sim.serve` makes that line reachable as a pty and a ``socket://`` port.

Exceptions (:mod:`firmware_sim.errors`)::

    SimError
    ├── SimConfigError
    └── CommandRefused
"""

from firmware_sim.clock import SimClock
from firmware_sim.errors import CommandRefused, SimConfigError, SimError
from firmware_sim.faults import Faults, FaultSet
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
from firmware_sim.quirks import Quirks
from firmware_sim.serve import LineHandle, SiteHandle, run_line, run_site

__all__ = [
    "Adf300lSim",
    "CircuitSpec",
    "CommandRefused",
    "Ddsy1352Sim",
    "Dtsy1352Sim",
    "FaultSet",
    "Faults",
    "LineHandle",
    "PrepaidSettings",
    "Quirks",
    "SimClock",
    "SimConfigError",
    "SimError",
    "SimLine",
    "SimMeter",
    "SiteHandle",
    "WaterValveSim",
    "run_line",
    "run_site",
]
