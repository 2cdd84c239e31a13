"""Offline autonomy: keep enforcing credit while the cloud is unreachable.

The cloud publishes, retained on ``down/config``, a :class:`protocol.contract.GatewayConfig` with a
credit horizon per meter: an absolute register value (total kWh or m³) the meter may reach. While the
broker has been unreachable for longer than ``offline_after_s``, every fresh reading is checked; a
meter whose register has reached its horizon is tripped (unless the horizon says protected), and an
``AUTONOMY_TRIP`` event is stored in the outbox, which publishes it once the link is back.

The last config is kept in ``autonomy.json`` in the data dir (written atomically), so a gateway that
reboots during an outage still knows every horizon. A meter is tripped once per outage; if it is seen
closed again (someone closed it by hand) it is tripped again, at most once per ``retrip_s``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from protocol.contract import CreditHorizon, GatewayConfig, Quantity, RelayState, decode
from protocol.errors import ContractError

__all__ = ["Autonomy", "TripDecision"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TripDecision:
    meter: str
    quantity: Quantity
    value: Decimal
    limit: Decimal


class Autonomy:
    def __init__(
        self,
        gateway: str,
        path: str | Path,
        *,
        offline_after_s: float = 300.0,
        retrip_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gateway = gateway
        self.path = Path(path)
        self.default_offline_after_s = offline_after_s
        self.retrip_s = retrip_s
        self._clock = clock
        self.config: GatewayConfig | None = None
        self._tripped: dict[str, float] = {}

    # -- configuration from the cloud ------------------------------------------------------------
    def load(self) -> None:
        """Read the last config the cloud sent (if any); a corrupt file is logged and ignored."""
        try:
            payload = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read %s: %s", self.path, exc)
            return
        try:
            self.config = decode(GatewayConfig, payload)
        except ContractError as exc:
            log.warning("ignoring corrupt %s: %s", self.path, exc)

    def apply(self, payload: bytes) -> GatewayConfig | None:
        """Take a ``down/config`` payload; older or foreign configs are ignored. Returns the new config."""
        try:
            config = decode(GatewayConfig, payload)
        except ContractError as exc:
            log.warning("ignoring invalid gateway config: %s", exc)
            return None
        if config.gateway != self.gateway:
            log.warning("ignoring config for gateway %s", config.gateway)
            return None
        if self.config is not None and config.issued_at < self.config.issued_at:
            log.info("ignoring config issued %s, older than the one in force", config.issued_at)
            return None
        tmp = self.path.with_suffix(".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self.config = config
        log.info("credit horizons in force for %d meters", len(config.horizons))
        return config

    @property
    def offline_after_s(self) -> float:
        return float(self.config.offline_after_s) if self.config else self.default_offline_after_s

    def horizon(self, meter: str) -> CreditHorizon | None:
        return self.config.horizons.get(meter) if self.config else None

    def active(self, offline_for_s: float) -> bool:
        return offline_for_s > self.offline_after_s

    def reconnected(self) -> None:
        """The cloud is back and decides again: forget this outage's trips."""
        self._tripped.clear()

    # -- the rule --------------------------------------------------------------------------------
    def check(
        self,
        meter: str,
        values: Mapping[Quantity, Decimal],
        relay: RelayState | None,
        offline_for_s: float,
    ) -> TripDecision | None:
        """Should ``meter`` be tripped now? (Pure: records nothing.)"""
        if not self.active(offline_for_s):
            return None
        horizon = self.horizon(meter)
        if horizon is None or horizon.protected:
            return None
        value = values.get(horizon.quantity)
        if value is None or value < horizon.limit:
            return None
        if relay == RelayState.OPEN:
            return None
        last = self._tripped.get(meter)
        if last is not None and self._clock() - last < self.retrip_s:
            return None
        return TripDecision(meter, horizon.quantity, value, horizon.limit)

    def tripped(self, meter: str) -> None:
        self._tripped[meter] = self._clock()
