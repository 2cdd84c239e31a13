"""``MF_`` overrides without paying for pydantic-settings when there are none (edge footprint)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import EdgeConfig, load_config
from edge.errors import ConfigError

TOML = """
[gateway]
id = "gw-env"
signing_key = "k"

[mqtt]
host = "file.example"
port = 1884

[[lines]]
name = "l1"
url = "/dev/ttyUSB0"

[[lines.meters]]
id = "m1"
protocol = "dlt645"
address = "000000000001"
"""


def write(tmp_path: Path) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(TOML)
    return path


def test_table_override_as_json_and_plain_result_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("mf_mqtt__tls", '{"ca_file": "/etc/ca.pem"}')  # case-insensitive, JSON table
    monkeypatch.setenv("MF_OUTBOX__MAX_ROWS", "5000")
    config = load_config(write(tmp_path))
    assert type(config) is EdgeConfig  # callers never see the settings subclass
    assert config.mqtt.tls is not None
    assert str(config.mqtt.tls.ca_file) == "/etc/ca.pem"
    assert config.mqtt.host == "file.example"
    assert config.mqtt.port == 1884
    assert config.outbox.max_rows == 5000
    assert config.lines[0].meters[0].id == "m1"


def test_bad_override_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MF_MQTT__PORT", "70000")
    with pytest.raises(ConfigError, match=r"mqtt\.port"):
        load_config(write(tmp_path))
    assert load_config(write(tmp_path), env=False).mqtt.port == 1884


def test_unrelated_mf_variables_are_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MF_REQUIRE_SERVICES", "1")
    monkeypatch.setenv("MF_MQTT_HOST", "cloud-setting.example")  # the cloud's flat name, not ours
    assert load_config(write(tmp_path)).mqtt.host == "file.example"


@pytest.mark.parametrize("override", [None, "MF_MQTT__HOST=env.example"])
def test_pydantic_settings_imported_only_for_an_override(tmp_path: Path, override: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MF_")}
    if override:
        key, value = override.split("=", 1)
        env[key] = value
    code = (
        "import sys; from edge.config import load_config; "
        f"c = load_config({str(write(tmp_path))!r}); "
        "print(c.mqtt.host, 'pydantic_settings' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == (["env.example", "True"] if override else ["file.example", "False"])
