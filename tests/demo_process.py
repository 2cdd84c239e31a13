"""``meterflow demo`` as a child process, read line by line: started, waited on until a line says it is
ready, always stopped and its output closed. The e2e and browser tests of the demo share this one way
of running it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Demo:
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.lines)


@contextmanager
def running_demo(*args: str, ready: str, within: float) -> Iterator[Demo]:
    """``meterflow demo ARGS``; the block runs once a line containing ``ready`` was printed (an
    AssertionError with the output so far after ``within`` seconds). On leaving, a demo still running
    is killed and the reader is joined, so :attr:`Demo.text` holds everything it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "meterflow.cli", "demo", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    demo = Demo(proc)
    seen = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            demo.lines.append(line)
            if ready in line:
                seen.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        assert seen.wait(within), demo.text
        yield demo
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
        assert proc.stdout is not None
        proc.stdout.close()
