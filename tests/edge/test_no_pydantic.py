"""The gateway daemon's process imports no pydantic (its core and model builds cost ~13 MiB of RSS).

Run in a fresh interpreter: the test process itself has pydantic loaded by other tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# What `python -m edge.daemon_cli run` imports, every protocol driver included, then what it does
# with the contract and the configuration before the first poll.
CODE = """
import sys
from datetime import UTC, datetime
from decimal import Decimal

import edge.daemon_cli
from edge.config import load_config
from edge.daemon import Daemon
from edge.drivers import PROTOCOLS, get_driver
from edge.meters import MeterRef
from protocol.contract import GatewayConfig, Reading, ReadingBatch, decode, encode, open_message, seal_message

config = load_config(sys.argv[1])
Daemon(config)
for protocol in PROTOCOLS:
    get_driver(protocol)
refs = [MeterRef.of(meter) for _, meter in config.meters().values()]
now = datetime.now(UTC)
reading = Reading(meter=refs[0].id, seq=0, ts=now, values={"energy_total_kwh": Decimal("1.5")})
decode(ReadingBatch, encode(ReadingBatch(gateway=config.gateway.id, batch="b", sent_at=now, readings=[reading])))
config_msg = GatewayConfig(gateway=config.gateway.id, version=1, issued_at=now, expires_at=now)
sealed = seal_message(config_msg, kid="k1", key=b"k")
open_message(GatewayConfig, "down/config", config.gateway.id, sealed, {"k1": b"k"}.get)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("pydantic", "pydantic_core", "pydantic_settings")))
"""


def test_daemon_modules_and_config_load_import_no_pydantic(tmp_path: Path) -> None:
    toml = (ROOT / "deploy" / "edge" / "edge.toml").read_text(encoding="utf-8")
    data_dir = next(line for line in toml.splitlines() if line.startswith("data_dir"))
    config = tmp_path / "edge.toml"
    key_file = next(line for line in toml.splitlines() if line.startswith("signing_key_file"))
    (tmp_path / "command.key").write_bytes(b"test-key\n")
    toml = toml.replace(data_dir, f'data_dir = "{tmp_path}"')
    toml = toml.replace(key_file, f'signing_key_file = "{tmp_path / "command.key"}"')
    config.write_text(toml, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MF_")}
    out = subprocess.run(
        [sys.executable, "-c", CODE, str(config)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
