"""Edge footprint, imports only: the gateway daemon's VmRSS after each import step, no polling.

Runs as bench/edge_footprint.py runs the daemon (the systemd unit's environment, bytecode cached by
one import pass first), each step's VmRSS read from /proc/self/status in a fresh interpreter:
interpreter, asyncio (which imports ssl), protocol.contract, edge.config, the daemon's modules, then
``load_config`` of deploy/edge/edge.toml. Repeated ``--runs`` times; pages shared with other processes
count, as they do in the running daemon's figure.

Run:  .venv/bin/python bench/edge_import_rss.py [--runs 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.edge_footprint import daemon_environment

ROOT = Path(__file__).resolve().parents[1]

STEPS = r"""
import sys


def rss():
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(status["VmRSS"].split()[0]) / 1024


steps = [("interpreter", rss())]
import asyncio
steps.append(("import asyncio (with ssl)", rss()))
import protocol.contract
steps.append(("import protocol.contract", rss()))
import edge.config
steps.append(("import edge.config", rss()))
import edge.daemon_cli, edge.daemon
steps.append(("import edge.daemon_cli, edge.daemon", rss()))
from edge.config import load_config
load_config(sys.argv[1], env=False)
steps.append(("load_config(edge.toml)", rss()))
pydantic = any(name.split(".")[0].startswith("pydantic") for name in sys.modules)
print("|".join(f"{name}={value:.1f}" for name, value in steps) + f"|pydantic={pydantic}")
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = daemon_environment(work)
        config = ROOT / "deploy" / "edge" / "edge.toml"
        runs = []
        for _ in range(args.runs):
            out = subprocess.run(
                [sys.executable, "-c", STEPS, str(config)],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            runs.append(dict(part.split("=", 1) for part in out.split("|")))
    print(f"edge imports: VmRSS (MiB) after each step, {args.runs} runs, unit environment, bytecode cached")
    for name in runs[0]:
        print(f"{name:40s} {'  '.join(run[name] for run in runs)}")


if __name__ == "__main__":
    main()
