"""Edge footprint side by side: our daemon and thingsboard-gateway polling the same kind of meters.

The target (docs/development.md) is a gateway daemon "better than the peer on both" RSS and CPU. The peer is
thingsboard-gateway 3.8.5 (PyPI) with its Modbus connector; it speaks no DL/T 645, so both gateways
poll simulated Acrel DDSY1352 meters in **Modbus-RTU** mode: 2 × 4 lines × 64 meters (9600 8E1
wire timing, served by this process as RTU over TCP, ``socket://``, the way an RS-485-to-Ethernet
converter presents a bus), one group of 256 per gateway so neither waits for the other's bus.
(Over ptys thingsboard-gateway's pymodbus serial transport fails every poll with EINVAL.)
Each gateway reads per meter per minute: total energy (holding registers 0000H–0001H, u32) and
relay status (0041H). Our daemon publishes to a throwaway Mosquitto; thingsboard-gateway uses the
same Mosquitto as its "ThingsBoard" (access-token auth is just an MQTT user name there). Both run
at log level WARNING. After the warm-up, CPU = utime+stime over the window ÷ the window (one core);
RSS = VmHWM (peak) and VmRSS, summed over the process and any children.

The peer lives in its own venv, never the project's: ``/tmp/tbvenv``, created on first use with

    python3 -m venv /tmp/tbvenv
    /tmp/tbvenv/bin/pip install thingsboard-gateway==3.8.5 pymodbus==3.9.2 pyserial pyserial-asyncio

(the Modbus connector pip-installs exactly pymodbus 3.9.2 at start-up when it is missing).

Run:  .venv/bin/python bench/edge_footprint_peer.py [--window 120] [--warmup 60] [--meters 256]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from edge_footprint import daemon_environment

from edge.devbroker import Mosquitto
from firmware_sim.line import SimLine
from firmware_sim.meters import Ddsy1352Sim
from firmware_sim.serve import run_line

LINES = 4
BAUD = 9600
TB_VENV = Path("/tmp/tbvenv")
TB_PACKAGES = ("thingsboard-gateway==3.8.5", "pymodbus==3.9.2", "pyserial", "pyserial-asyncio")
TICK = os.sysconf("SC_CLK_TCK")


def ensure_tb_venv() -> Path:
    exe = TB_VENV / "bin" / "thingsboard-gateway"
    if not exe.exists():
        subprocess.run(["python3", "-m", "venv", str(TB_VENV)], check=True)
        subprocess.run([str(TB_VENV / "bin" / "pip"), "install", "-q", *TB_PACKAGES], check=True)
    return exe


def tree(pid: int) -> list[int]:
    """The process and its descendants (thingsboard-gateway may fork helpers)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = Path(f"/proc/{pid}/task/{task.name}/children")
        if children.exists():
            for child in children.read_text().split():
                pids.extend(tree(int(child)))
    return pids


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in tree(pid):
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def memory_kib(pid: int) -> dict[str, int]:
    out = {"VmHWM": 0, "VmRSS": 0, "procs": 0}
    for p in tree(pid):
        out["procs"] += 1
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] += int(value.split()[0])
    return out


def ours_config(data: Path, port: int, urls: list[str], per_line: int) -> str:
    parts = [
        f'[gateway]\nid = "gw-foot"\ndata_dir = "{data}"\nsigning_key = "k"\nlog_level = "WARNING"\n',
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n',
    ]
    for n, url in enumerate(urls):
        parts.append(f'[[lines]]\nname = "l{n}"\nurl = "{url}"\nbaudrate = {BAUD}\nparity = "E"\n')
        for i in range(1, per_line + 1):
            parts.append(
                f'[[lines.meters]]\nid = "m{n}-{i}"\nprotocol = "modbus"\nmodel = "ddsy1352"\n'
                f'address = "{i}"\nread = ["energy_total_kwh"]\ninterval_s = 60\n'
            )
    return "\n".join(parts)


def tb_config(work: Path, port: int, urls: list[str], per_line: int) -> Path:
    """thingsboard-gateway's config dir: tb_gateway.json, modbus.json, logs.json at WARNING."""
    conf = work / "config"
    conf.mkdir()
    (work / "logs").mkdir()
    package = TB_VENV / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    logs = (package / "thingsboard_gateway" / "config" / "logs.json").read_text()
    logs = logs.replace("./logs/", f"{work}/logs/")
    logs = re.sub(r'"level": "(DEBUG|INFO)"', '"level": "WARNING"', logs)
    (conf / "logs.json").write_text(logs)
    gateway: dict[str, Any] = {
        "thingsboard": {
            "host": "127.0.0.1",
            "port": port,
            "remoteShell": False,
            "remoteConfiguration": False,
            "statistics": {"enable": False, "statsSendPeriodInSeconds": 3600},
            "deviceFiltering": {"enable": False},
            "checkConnectorsConfigurationInSeconds": 60,
            "security": {"type": "accessToken", "accessToken": "bench"},
            "qos": 1,
            "reportStrategy": {"type": "ON_RECEIVED"},
        },
        "storage": {"type": "memory", "read_records_count": 100, "max_records_count": 100000},
        "grpc": {"enabled": False},
        "connectors": [{"type": "modbus", "name": "Modbus", "configuration": "modbus.json"}],
    }
    (conf / "tb_gateway.json").write_text(json.dumps(gateway, indent=2))
    slaves = []
    for n, url in enumerate(urls):
        host, line_port = url.removeprefix("socket://").rsplit(":", 1)
        for i in range(1, per_line + 1):
            slaves.append(
                {
                    "type": "tcp",
                    "method": "rtu",  # RTU frames over the TCP stream, as to an RS-485 gateway
                    "host": host,
                    "port": int(line_port),
                    "unitId": i,
                    "deviceName": f"tb{n}-{i}",
                    "deviceType": "ddsy1352",
                    "timeout": 1,
                    "retries": 2,
                    "byteOrder": "BIG",
                    "wordOrder": "BIG",
                    "pollPeriod": 60000,
                    "attributes": [],
                    "timeseries": [
                        {
                            "tag": "energy_total_kwh",
                            "type": "32uint",
                            "functionCode": 3,
                            "objectsCount": 2,
                            "address": 0,
                            "divider": 100,
                        },
                        {
                            "tag": "relay_status",
                            "type": "16uint",
                            "functionCode": 3,
                            "objectsCount": 1,
                            "address": 0x41,
                        },
                    ],
                    "attributeUpdates": [],
                    "rpc": [],
                }
            )
    (conf / "modbus.json").write_text(json.dumps({"master": {"slaves": slaves}}, indent=2))
    return conf


def serve(stack: ExitStack, group: str, per_line: int) -> list[str]:
    urls = []
    for n in range(LINES):
        sims = [Ddsy1352Sim(i, protocol="modbus") for i in range(1, per_line + 1)]
        line = SimLine(BAUD, "E", sims, turnaround_s=0.02, name=f"{group}{n}")
        urls.append(stack.enter_context(run_line(line, pty=False, tcp_port=0)).url)
    return urls


SESSION_LIMITS = {  # what a ThingsBoard server answers to getSessionLimits: no rate limits
    "maxPayloadSize": 65536,
    "maxInflightMessages": 100,
    "rateLimits": {},
    "gatewayRateLimits": {},
}


class Counter:
    """Counts what each gateway publishes (proof that both are polling), by topic root.

    It also plays the one part of the ThingsBoard server that the peer waits for: the answer to
    its ``getSessionLimits`` RPC (without it thingsboard-gateway polls but never publishes).
    """

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.counts: dict[str, int] = {"meterflow": 0, "thingsboard": 0}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-counter")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("#")
        self.client.loop_start()

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        if message.topic.startswith("v1/devices/me/rpc/request/"):
            if json.loads(message.payload).get("method") == "getSessionLimits":
                request_id = message.topic.rsplit("/", 1)[1]
                answer = json.dumps(SESSION_LIMITS)
                self.client.publish(f"v1/devices/me/rpc/response/{request_id}", answer, qos=1)
        elif message.topic.startswith("v1/gateway/telemetry"):
            self.counts["thingsboard"] += 1
        elif "/up/readings" in message.topic:
            self.counts["meterflow"] += 1

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--meters", type=int, default=256)
    parser.add_argument("--window", type=float, default=120.0)
    parser.add_argument("--warmup", type=float, default=60.0)
    args = parser.parse_args()
    per_line = args.meters // LINES
    tb_exe = ensure_tb_venv()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        work = Path(tmp)
        broker = stack.enter_context(Mosquitto(work / "broker"))
        counter = Counter(broker.port)
        stack.callback(counter.stop)
        ours_urls = serve(stack, "ours", per_line)
        peer_urls = serve(stack, "peer", per_line)

        config = work / "edge.toml"
        config.write_text(ours_config(work / "data", broker.port, ours_urls, per_line))
        env = daemon_environment(work)  # as under systemd, bytecode cached (see edge_footprint.py)
        ours_log = (work / "ours.log").open("wb")
        ours = subprocess.Popen(
            [sys.executable, "-m", "edge.daemon_cli", "run", "--config", str(config)],
            stdout=ours_log,
            stderr=subprocess.STDOUT,
            env=env,
        )

        tb_work = work / "tb"
        tb_work.mkdir()
        tb_conf = tb_config(tb_work, broker.port, peer_urls, per_line)
        tb_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        tb_env["TB_GW_CONFIG_DIR"] = str(tb_conf)
        peer_log = (work / "peer.log").open("wb")
        peer = subprocess.Popen(
            [str(tb_exe)], cwd=tb_work, stdout=peer_log, stderr=subprocess.STDOUT, env=tb_env
        )
        procs = {"meterflow (python -m edge.daemon_cli run)": ours, "thingsboard-gateway 3.8.5": peer}
        results: dict[str, tuple[float, dict[str, int]]] = {}
        try:
            time.sleep(args.warmup)
            for name, proc in procs.items():
                if proc.poll() is not None:
                    log = work / ("ours.log" if proc is ours else "peer.log")
                    raise SystemExit(f"{name} exited: {log.read_text()[-3000:]}")
            c0 = {name: cpu_seconds(p.pid) for name, p in procs.items()}
            n0 = dict(counter.counts)
            t0 = time.monotonic()
            time.sleep(args.window)
            c1 = {name: cpu_seconds(p.pid) for name, p in procs.items()}
            t1 = time.monotonic()
            n1 = dict(counter.counts)
            for name, proc in procs.items():
                results[name] = ((c1[name] - c0[name]) / (t1 - t0), memory_kib(proc.pid))
            peer_published = published_by_peer(work / "peer.log")
        finally:
            for proc in procs.values():
                proc.terminate()
            for proc in procs.values():
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        print(
            f"edge footprint vs peer: {args.meters} DDSY1352 Modbus meters per gateway on {LINES} lines "
            f"({BAUD} 8E1), 1 poll/meter/min (energy + relay status), window {args.window:.0f} s "
            f"after {args.warmup:.0f} s warm-up (Python {sys.version.split()[0]})"
        )
        for name, (share, mem) in results.items():
            print(
                f"{name:45s} CPU {share * 100:5.2f} % of one core; RSS peak {mem['VmHWM'] / 1024:6.1f} MiB, "
                f"end {mem['VmRSS'] / 1024:6.1f} MiB ({mem['procs']} process(es))"
            )
        print(
            "MQTT publishes in the window: "
            + ", ".join(f"{k} {n1[k] - n0[k]}" for k in n1)
            + " (meterflow batches readings; thingsboard-gateway sends one telemetry message per poll)"
        )
        if peer_published:
            print(f"peer log (last lines): {peer_published}")


def published_by_peer(log: Path) -> str:
    """The peer's last log lines, so a run where it polled nothing is visible in the output."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(lines[-3:])


if __name__ == "__main__":
    main()
