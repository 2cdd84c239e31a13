"""Gateway configuration: the sample parses, errors name key and line, MF_ variables override."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import frame_budget_s, load_config
from edge.errors import ConfigError
from protocol.contract import Quantity

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "deploy" / "edge" / "edge.toml"

MINIMAL = """\
[gateway]
id = "gw-1"
data_dir = "{data}"
signing_key = "k"

[mqtt]
host = "127.0.0.1"
port = 1883

[[lines]]
name = "l1"
url = "socket://127.0.0.1:9"
baudrate = 2400

[[lines.meters]]
id = "m1"
protocol = "dlt645"
address = "000000000001"
read = ["energy_total_kwh", "voltage_a_v"]
interval_s = 5

[[lines.meters]]
id = "m2"
protocol = "modbus"
address = "7"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(text.format(data=tmp_path), encoding="utf-8")
    return path


def test_sample_config_is_valid() -> None:
    config = load_config(SAMPLE, env=False)
    assert config.gateway.id == "gw-0001"
    assert config.mqtt.tls is not None
    assert config.mqtt.port == 8883
    assert [line.name for line in config.lines] == ["line1", "water"]
    assert config.lines[0].meters[1].control_mode == "close_permit"
    assert set(config.meters()) == {"room-101", "room-102", "water-101"}


def test_minimal_config_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), env=False)
    assert config.client_id == "meterflow-gw-1"
    assert config.signing_key_bytes() == b"k"
    assert "signing_key='***'" in repr(config.gateway)  # the key stays out of logs and tracebacks
    meter = config.lines[0].meters[0]
    assert meter.read == (Quantity.ENERGY_TOTAL_KWH, Quantity.VOLTAGE_A_V)
    assert config.lines[0].meters[1].read == (Quantity.ENERGY_TOTAL_KWH,)
    assert config.mqtt.protocol == "5"
    assert config.outbox.synchronous == "FULL"


def test_error_names_key_and_line(tmp_path: Path) -> None:
    bad = MINIMAL.replace('address = "000000000001"', 'address = "12345"')
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, bad), env=False)
    text = str(exc.value)
    assert "edge.toml:18: lines[0].meters[0].address" in text
    assert "12 digits" in text


def test_error_on_bad_scalar_points_at_its_line(tmp_path: Path) -> None:
    bad = MINIMAL.replace("baudrate = 2400", "baudrate = 12")
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, bad), env=False)
    assert "edge.toml:13: lines[0].baudrate" in str(exc.value)


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    bad = MINIMAL.replace("port = 1883", "port = 1883\nhots = 1")
    with pytest.raises(ConfigError, match=r"edge.toml:9: mqtt.hots"):
        load_config(write(tmp_path, bad), env=False)


def test_unknown_quantity_and_duplicate_meter(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"read"):
        load_config(write(tmp_path, MINIMAL.replace('"voltage_a_v"', '"volts"')), env=False)
    dup = MINIMAL.replace('id = "m2"', 'id = "m1"')
    with pytest.raises(ConfigError, match=r"duplicate meter id 'm1'"):
        load_config(write(tmp_path, dup), env=False)


def test_not_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not valid TOML"):
        load_config(write(tmp_path, "[gateway\nid="), env=False)
    with pytest.raises(ConfigError, match=r"cannot read"):
        load_config(tmp_path / "missing.toml")


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MF_MQTT__HOST", "broker.example")
    monkeypatch.setenv("MF_MQTT__PASSWORD", "s3cret")
    monkeypatch.setenv("MF_GATEWAY__LOG_JSON", "true")
    config = load_config(write(tmp_path, MINIMAL))
    assert config.mqtt.host == "broker.example"
    assert config.mqtt.port == 1883  # the file's value survives a partial override
    assert config.mqtt.password == "s3cret"
    assert config.gateway.log_json is True
    assert config.gateway.id == "gw-1"


def test_signing_key_file(tmp_path: Path) -> None:
    (tmp_path / "key").write_bytes(b"from-file\n")
    text = MINIMAL.replace('signing_key = "k"', f'signing_key_file = "{tmp_path / "key"}"')
    assert load_config(write(tmp_path, text), env=False).signing_key_bytes() == b"from-file"
    both = MINIMAL.replace('signing_key = "k"', f'signing_key = "k"\nsigning_key_file = "{tmp_path}/key"')
    with pytest.raises(ConfigError, match=r"not both"):
        load_config(write(tmp_path, both), env=False)


def test_frame_budget_counts_parity_bits(tmp_path: Path) -> None:
    line = load_config(write(tmp_path, MINIMAL), env=False).lines[0]
    assert frame_budget_s(line, 44) == pytest.approx(44 * 11 / 2400)
