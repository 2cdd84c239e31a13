"""Simulated meters: the server role of the same sans-IO codecs the gateway uses.

- :class:`Ddsy1352Sim` single-phase, :class:`Dtsy1352Sim` three-phase (DL/T 645 or Modbus-RTU);
- :class:`Adf300lSim` multi-circuit box (Modbus-RTU, one unit id, a relay and balance per circuit);
- :class:`WaterValveSim` valve water meter (CJ/T 188).
"""

from firmware_sim.meters.base import PROTOCOLS, SimMeter
from firmware_sim.meters.circuit import Circuit, Electrical, PrepaidSettings
from firmware_sim.meters.electric import Adf300lSim, CircuitSpec, Ddsy1352Sim, Dtsy1352Sim, ElectricMeter
from firmware_sim.meters.water import WaterValveSim

__all__ = [
    "MODELS",
    "PROTOCOLS",
    "Adf300lSim",
    "Circuit",
    "CircuitSpec",
    "Ddsy1352Sim",
    "Dtsy1352Sim",
    "ElectricMeter",
    "Electrical",
    "PrepaidSettings",
    "SimMeter",
    "WaterValveSim",
]

MODELS: dict[str, type[SimMeter]] = {
    "ddsy1352": Ddsy1352Sim,
    "dtsy1352": Dtsy1352Sim,
    "adf300l": Adf300lSim,
    "water_valve": WaterValveSim,
}
