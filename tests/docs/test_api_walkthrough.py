"""docs/api.md's walk-through, run as written: the doc is this test's source.

The ``sh`` blocks of the section "Walk-through: …" are joined into one bash script and run with
``-euo pipefail`` in an empty directory: a real ``meterflow cloud serve`` on an empty SQLite database,
``curl`` with the doc's request bodies, a simulated meter, ``meterflow edge scan|register|run``, the
machine's Mosquitto. Only the ports and the MQTT topic prefix are the test's (free ones, a private
prefix), given as the variables the doc reads with defaults. The script must end with the recharge's
answer: the new balance, below the 15000 fen paid in because readings were billed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
SECTION = "## Walk-through: from an empty database to a billed reading and a recharge"
BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.MULTILINE | re.DOTALL)

pytestmark = pytest.mark.services


def walkthrough_script() -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    blocks = BLOCK.findall(text[start : end if end >= 0 else len(text)])
    assert len(blocks) >= 8, "the walk-through lost its blocks"
    return "\n".join(blocks)


def test_every_call_of_the_walkthrough_shows_its_body() -> None:
    script = walkthrough_script()
    posts = re.findall(
        r'curl -s --fail-with-body (?:-X PUT )?"\$API/[^"]+" -H "\$AUTH" -H "\$JSON" \\\n  -d', script
    )
    assert len(posts) >= 14  # each POST/PUT gives its JSON body, none is left to /openapi.json


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_walkthrough_runs_as_written(
    mqtt_broker: tuple[str, int], unique_prefix: str, tmp_path: Path
) -> None:
    assert mqtt_broker == ("127.0.0.1", 1883)  # the doc's broker
    env = {
        key: value for key, value in os.environ.items() if not key.startswith("MF_")
    }  # nothing of the caller's settings leaks in
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # `meterflow` on the PATH
        MF_API_PORT=str(_free_port()),
        SIM_PORT=str(_free_port()),
        MF_MQTT_PREFIX=unique_prefix,
    )
    # stop whatever the script started in the background if it fails half-way
    script = "trap 'kill $(jobs -p) 2> /dev/null || true' EXIT\n" + walkthrough_script()
    started = time.monotonic()
    proc = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    elapsed = time.monotonic() - started
    logs = "".join(
        f"\n--- {name}\n{(tmp_path / 'walkthrough' / name).read_text(errors='replace')[-3000:]}"
        for name in ("cloud.log", "edge.log")
        if (tmp_path / "walkthrough" / name).exists()
    )
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}{logs}"
    last = json.loads(out.strip().splitlines()[-1])
    assert last["amount_fen"] == 5000
    assert 0 < last["balance_fen"] < 15_000  # 10000 + 5000 paid in, less the billed readings
    assert last["balance_yuan"] == f"{last['balance_fen'] // 100}.{last['balance_fen'] % 100:02d}"
    print(f"walk-through ran in {elapsed:.0f} s")  # the figure in docs/installer.md
