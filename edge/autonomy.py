"""Offline autonomy: keep enforcing credit while the cloud is unreachable.

The cloud publishes, retained on ``down/config``, a :class:`protocol.contract.GatewayConfig` with a
credit horizon per meter: an absolute register value (total kWh or m³) the meter may reach. While the
broker has been unreachable for longer than ``offline_after_s``, every fresh reading is checked; a
meter whose register has reached its horizon is tripped (unless the horizon says protected), and an
``AUTONOMY_TRIP`` event is stored in the outbox, which publishes it once the link is back.

The last config is kept in ``autonomy.json`` in the data dir (written atomically), so a gateway that
reboots during an outage still knows every horizon. A meter is tripped once per outage; if it is seen
closed again (someone closed it by hand) it is tripped again, at most once per ``retrip_s``.

Trust: anyone with broker access can publish a retained ``down/config``, so a config is only taken if
it is sealed by the cloud with a key the gateway holds and that is not retired (``edge.keys``), names
this gateway, lies inside its acceptance window (not expired, not issued more than
:data:`protocol.contract.CONFIG_CLOCK_SKEW` ahead of the gateway's clock) and carries a ``version``
newer than the one in force. Anything else raises :class:`edge.errors.ConfigRejected`; the daemon logs
it and tells the cloud (``CONFIG_REJECTED`` event). The same config redelivered (a retained message on
every reconnect) is quietly ignored. ``autonomy.json`` holds the sealed bytes as received and is
verified again at load (under any key held, retired ones included: it was accepted under a key valid
then), so a file that does not verify, or one written before configs were sealed, is ignored.

An expired config stays in force: ``expires_at`` bounds when a config may be *accepted*, so an old
retained config cannot be replayed to a gateway; once accepted, its horizons are absolute register
limits that the tenant's money bought, and a gateway cut off for longer than the expiry is safer
enforcing the last good limits than none. Only a newer genuine config replaces it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from edge.errors import ConfigRejected
from edge.keys import KeyRing
from protocol.contract import (
    CreditHorizon,
    GatewayConfig,
    Kind,
    Quantity,
    RelayState,
    check_config_window,
    open_message,
)
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
        keys: KeyRing,
        offline_after_s: float = 300.0,
        retrip_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.gateway = gateway
        self.path = Path(path)
        self.keys = keys
        self.default_offline_after_s = offline_after_s
        self.retrip_s = retrip_s
        self._clock = clock
        self._wall = wall
        self.config: GatewayConfig | None = None
        self._payload: bytes | None = None
        self._tripped: dict[str, float] = {}

    # -- configuration from the cloud ------------------------------------------------------------
    def load(self) -> None:
        """Read the last config the cloud sent (if any); a file that does not verify is ignored."""
        try:
            payload = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read %s: %s", self.path, exc)
            return
        try:
            _kid, config = open_message(
                GatewayConfig, Kind.CONFIG, self.gateway, payload, self.keys.any_key_for
            )
        except ContractError as exc:
            log.warning("ignoring %s, it does not verify: %s", self.path, exc)
            return
        if config.gateway != self.gateway:
            log.warning("ignoring %s: it is gateway %s's config", self.path, config.gateway)
            return
        self.config, self._payload = config, payload
        log.info(
            "credit horizons v%d in force for %d meters (from %s)",
            config.version,
            len(config.horizons),
            self.path,
        )

    def apply(self, payload: bytes) -> GatewayConfig | None:
        """Take a ``down/config`` payload: the new config, None for the one in force redelivered.

        Raises :class:`ConfigRejected` (reason in the message) for anything not sealed with a key in
        force, not this gateway's, outside its acceptance window, or not newer than the one in force.
        """
        try:
            kid, config = open_message(GatewayConfig, Kind.CONFIG, self.gateway, payload, self.keys.key_for)
        except ContractError as exc:
            raise ConfigRejected(str(exc)) from exc
        if config.gateway != self.gateway:
            raise ConfigRejected(f"config is for gateway {config.gateway}, not {self.gateway}")
        if self.config is not None and config.version <= self.config.version:
            if config.version == self.config.version and payload == self._payload:
                log.debug("config v%d redelivered", config.version)
                return None
            raise ConfigRejected(
                f"config v{config.version} is not newer than v{self.config.version} in force"
            )
        try:
            check_config_window(config, self._wall())
        except ContractError as exc:
            raise ConfigRejected(str(exc)) from exc
        tmp = self.path.with_suffix(".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self.config, self._payload = config, payload
        log.info(
            "credit horizons v%d (key %s) in force for %d meters", config.version, kid, len(config.horizons)
        )
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
