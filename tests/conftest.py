"""Shared fixtures: where the real services are, and whether a test may skip without them.

``make test`` on a laptop without PostgreSQL/Redis/Mosquitto skips the tests marked ``services``
with a reason; CI sets ``MF_REQUIRE_SERVICES=1`` and then an unreachable service fails the run.
"""

from __future__ import annotations

import os
import socket
import uuid

import pytest

POSTGRES_URL = os.environ.get("MF_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("MF_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
MQTT_HOST = os.environ.get("MF_TEST_MQTT_HOST", "127.0.0.1")
MQTT_PORT = int(os.environ.get("MF_TEST_MQTT_PORT", "1883"))


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip (laptop) or fail (CI) when a real service is not reachable."""
    if _reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if os.environ.get("MF_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message} and MF_REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(f"{message}; start it to run this test (CI requires it)")


@pytest.fixture
def mqtt_broker() -> tuple[str, int]:
    """The machine's Mosquitto (host, port)."""
    require_service("Mosquitto", MQTT_HOST, MQTT_PORT)
    return MQTT_HOST, MQTT_PORT


@pytest.fixture
def redis_url() -> str:
    require_service("Redis", "127.0.0.1", 6379)
    return REDIS_URL


@pytest.fixture
def postgres_url() -> str:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    return POSTGRES_URL


@pytest.fixture
def unique_prefix() -> str:
    """An MQTT topic prefix nobody else uses, so tests sharing one broker never see each other."""
    return f"mftest/{uuid.uuid4().hex[:10]}"
