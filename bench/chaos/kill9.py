"""Long power-cut run (docs/development.md: 200 kills): tests/edge/test_kill9.py with more rounds.

    .venv/bin/python bench/chaos/kill9.py [ROUNDS] [SEED]

Prints the pytest verdict; needs Mosquitto on 127.0.0.1:1883.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    rounds = sys.argv[1] if len(sys.argv) > 1 else "200"
    seed = sys.argv[2] if len(sys.argv) > 2 else str(int(time.time()))
    env = {**os.environ, "MF_KILL9_ROUNDS": rounds, "MF_KILL9_SEED": seed}
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/edge/test_kill9.py",
            "-q",
            "--timeout=3600",
            "-p",
            "no:cacheprovider",
        ],
        cwd=ROOT,
        env=env,
        check=False,
    )
    verdict = "PASS" if result.returncode == 0 else "FAIL"
    print(f"kill -9 chaos: {rounds} kills, seed {seed}: {verdict} in {time.monotonic() - started:.0f} s")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
