"""``MF_`` overrides: an explicit mapping, no pydantic-settings (nor pydantic) in the gateway."""

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
    assert type(config) is EdgeConfig
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


def test_whole_section_as_json_and_bad_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MF_OUTBOX", '{"synchronous": "NORMAL"}')
    monkeypatch.setenv("MF_MQTT__PASSWORD", "{not json, a password}")  # a string field stays a string
    config = load_config(write(tmp_path))
    assert config.outbox.synchronous == "NORMAL"
    assert config.outbox.max_rows == 2_000_000
    assert config.mqtt.password == "{not json, a password}"
    monkeypatch.setenv("MF_MQTT__TLS", "ca_file=/etc/ca.pem")
    with pytest.raises(ConfigError, match=r"MF_MQTT__TLS \(environment\): a table is given as a JSON object"):
        load_config(write(tmp_path))


def test_override_error_names_the_variable_not_a_file_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MF_GATEWAY__LOG_LEVEL", "LOUD")
    with pytest.raises(ConfigError, match=r"^MF_GATEWAY__LOG_LEVEL \(environment\): gateway\.log_level: "):
        load_config(write(tmp_path))
    monkeypatch.delenv("MF_GATEWAY__LOG_LEVEL")
    monkeypatch.setenv("MF_MQTT__HOTS", "x")
    with pytest.raises(ConfigError, match=r"MF_MQTT__HOTS \(environment\): mqtt\.hots: .*unknown field"):
        load_config(write(tmp_path))


@pytest.mark.parametrize("override", [None, "MF_MQTT__HOST=env.example"])
def test_no_pydantic_with_or_without_an_override(tmp_path: Path, override: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MF_")}
    if override:
        key, value = override.split("=", 1)
        env[key] = value
    code = (
        "import sys; from edge.config import load_config; "
        f"c = load_config({str(write(tmp_path))!r}); "
        "print(c.mqtt.host, any(m.startswith('pydantic') for m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["env.example" if override else "file.example", "False"]
