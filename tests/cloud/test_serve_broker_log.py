"""``meterflow cloud serve`` says how its broker link is, and two installations on one host do not share
an MQTT client id (the broker would drop one for the other, in turns)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cloud.runtime import default_client_id
from cloud.settings import Settings


def test_default_client_id_is_stable_per_installation_and_differs_between_them(tmp_path: Path) -> None:
    one = Settings(environment="test", data_dir=tmp_path / "a", database_url="sqlite:///a.db")
    again = Settings(environment="test", data_dir=tmp_path / "a", database_url="sqlite:///a.db")
    other = Settings(environment="test", data_dir=tmp_path / "b", database_url="sqlite:///b.db")
    assert default_client_id(one) == default_client_id(again)  # a restart resumes its broker session
    assert default_client_id(one) != default_client_id(other)
    assert default_client_id(one).startswith(f"mf-cloud-{socket.gethostname()[:40]}-")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.services
def test_serve_logs_its_broker_link(mqtt_broker: tuple[str, int], unique_prefix: str, tmp_path: Path) -> None:
    host, port = mqtt_broker
    env = {
        **os.environ,
        "MF_DATA_DIR": str(tmp_path / "srv"),
        "MF_MQTT_HOST": host,
        "MF_MQTT_PORT": str(port),
        "MF_MQTT_PREFIX": unique_prefix,
    }
    cmd = [sys.executable, "-m", "meterflow.cli", "cloud", "serve", "--migrate", "--port", str(_free_port())]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("MQTT connected to" in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "no broker link logged:\n" + "".join(lines)
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        reader.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
    text = "".join(lines)
    assert f"MQTT connected to {host}:{port} as mf-cloud-" in text
    assert "serving the Meterflow API on http://" in text
