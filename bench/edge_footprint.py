"""Edge footprint: a real ``meterflow edge run`` with 256 meters, steady state: RSS and CPU share.

256 simulated DL/T 645 meters on 4 lines (64 each, 2400 8E1, served on ptys by this process), each
read once per minute (total energy + state), readings published to a throwaway Mosquitto. After a
warm-up, the daemon's CPU time (utime+stime from /proc) over the window ÷ the window = share of one
core; RSS = VmHWM (peak) and VmRSS at the end. The simulators and the broker are other processes'
cost and are not counted.

Bytecode: a gateway installed with pip has compiled ``.pyc`` files; this environment sets
``PYTHONDONTWRITEBYTECODE=1``, which would make the daemon compile every project module from source
at each start (≈ 1 MiB more peak RSS from the compiler). The daemon therefore runs with
``PYTHONPYCACHEPREFIX`` pointing at a scratch cache that one import pass fills first.
``--source-compile`` keeps the inherited environment instead. The daemon also gets the
``Environment=`` lines of deploy/edge/meterflow-edge.service (``MALLOC_ARENA_MAX=2``), as under systemd.

Run:  .venv/bin/python bench/edge_footprint.py [--window 120] [--warmup 30] [--meters 256]
      [--entry daemon_cli|meterflow] [--source-compile] [--tls]

``--tls``: the broker link over TLS (server authentication with a CA file, as deploy/edge/edge.toml
configures it), to see what an SSL context and a TLS session add. To show that the figure is a working
daemon's, the bench also counts the readings that reach the broker in the window (a subscriber in
this process; how many fall in the window depends on where the poll rounds fall) and says whether
the daemon has pydantic's compiled core mapped (/proc/<pid>/maps).

``--entry daemon_cli`` (default) starts ``python -m edge.daemon_cli run`` as the systemd unit does;
``meterflow`` starts ``meterflow edge run``, which in a venv with every extra also imports the cloud's CLI.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.edge.mqtt_helpers

from edge.devbroker import Mosquitto
from firmware_sim.line import SimLine
from firmware_sim.meters import Ddsy1352Sim
from firmware_sim.serve import run_line
from protocol.contract import ReadingBatch
from tests.edge.mqtt_helpers import Subscriber

LINES = 4
TICK = os.sysconf("SC_CLK_TCK")
UNIT = Path(__file__).resolve().parent.parent / "deploy" / "edge" / "meterflow-edge.service"


def unit_environment() -> dict[str, str]:
    """``Environment=K=V`` lines of the systemd unit, so the daemon runs here as it does there."""
    env = {}
    for line in UNIT.read_text().splitlines():
        if line.startswith("Environment="):
            key, _, value = line.removeprefix("Environment=").strip().strip('"').partition("=")
            env[key] = value
    return env


def daemon_environment(work: Path, source_compile: bool = False) -> dict[str, str]:
    """The daemon's environment: the unit's variables, and bytecode cached unless asked otherwise."""
    env = dict(os.environ) | unit_environment()
    if not source_compile:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        warm = "import edge.daemon_cli, edge.daemon, edge.cli"
        subprocess.run([sys.executable, "-c", warm], env=env, check=True)
    return env


def readings_received(sub: Subscriber) -> int:
    return sum(len(batch.readings) for batch in sub.opened(ReadingBatch, "/up/readings"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def memory_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0])
    return out


def config_text(data: Path, port: int, urls: list[str], per_line: int, ca_file: Path | None = None) -> str:
    parts = [
        f'[gateway]\nid = "gw-foot"\ndata_dir = "{data}"\nsigning_key = "k"\nlog_level = "WARNING"\n',
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n',
    ]
    if ca_file is not None:
        parts.append(f'[mqtt.tls]\nca_file = "{ca_file}"\n')
    for n, url in enumerate(urls):
        parts.append(
            f'[[lines]]\nname = "l{n}"\nurl = "{url}"\nbaudrate = 2400\nparity = "E"\nturnaround_s = 0.3\n'
        )
        for i in range(per_line):
            parts.append(
                f'[[lines.meters]]\nid = "m{n}-{i}"\nprotocol = "dlt645"\naddress = "0000000{n}{i:04d}"\n'
                f'read = ["energy_total_kwh"]\ninterval_s = 60\n'
            )
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--meters", type=int, default=256)
    parser.add_argument("--window", type=float, default=120.0)
    parser.add_argument("--warmup", type=float, default=30.0)
    parser.add_argument("--entry", choices=("daemon_cli", "meterflow"), default="daemon_cli")
    parser.add_argument("--source-compile", action="store_true", help="no bytecode cache (see above)")
    parser.add_argument("--tls", action="store_true", help="broker link over TLS (see above)")
    args = parser.parse_args()
    per_line = args.meters // LINES
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        work = Path(tmp)
        broker = stack.enter_context(Mosquitto(work / "broker", tls=args.tls))
        sub = Subscriber(
            broker.host,
            broker.port,
            "mf/v1/gw/+/up/readings",
            client_id="bench-sub",
            ca_file=broker.ca_file,
            keys={"k1": b"k"},  # the gateway's signing_key below
        )
        stack.callback(sub.close)
        urls = []
        for n in range(LINES):
            sims = [Ddsy1352Sim(f"0000000{n}{i:04d}") for i in range(per_line)]
            handle = stack.enter_context(
                run_line(SimLine(2400, "E", sims, turnaround_s=0.02, name=f"l{n}"), tcp_port=None)
            )
            urls.append(handle.url)
        config = work / "edge.toml"
        config.write_text(config_text(work / "data", broker.port, urls, per_line, broker.ca_file))
        if args.entry == "meterflow":
            cmd = [str(Path(sys.executable).with_name("meterflow")), "edge", "run"]
        else:  # what the systemd unit runs
            cmd = [sys.executable, "-m", "edge.daemon_cli", "run"]
        env = daemon_environment(work, args.source_compile)
        proc = subprocess.Popen([*cmd, "--config", str(config)], stderr=subprocess.PIPE, env=env)
        try:
            time.sleep(args.warmup)
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            c0, t0, n0 = cpu_seconds(proc.pid), time.monotonic(), readings_received(sub)
            time.sleep(args.window)
            c1, t1, n1 = cpu_seconds(proc.pid), time.monotonic(), readings_received(sub)
            mem = memory_kib(proc.pid)
            pydantic = "pydantic_core" in Path(f"/proc/{proc.pid}/maps").read_text()
        finally:
            proc.terminate()
            proc.wait(timeout=20)
        share = (c1 - c0) / (t1 - t0)
        print(
            f"edge footprint: {args.meters} meters on {LINES} lines, 1 poll/meter/min, "
            f"window {args.window:.0f} s after {args.warmup:.0f} s warm-up, entry {args.entry} "
            f"(Python {sys.version.split()[0]}, "
            f"{'compiled from source' if args.source_compile else 'bytecode cached'}, "
            f"unit environment {' '.join(f'{k}={v}' for k, v in unit_environment().items())})"
        )
        print(
            f"CPU {share * 100:.2f} % of one core; RSS peak {mem['VmHWM'] / 1024:.1f} MiB, "
            f"end {mem['VmRSS'] / 1024:.1f} MiB"
        )
        print(
            f"broker link {'TLS' if args.tls else 'plain TCP'}; readings at the broker: {n1 - n0} in the "
            f"window, {n1} since start ({args.meters} per poll round); "
            f"pydantic core mapped in the daemon: {'yes' if pydantic else 'no'}"
        )


if __name__ == "__main__":
    main()
