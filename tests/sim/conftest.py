"""Fixtures for the simulator tests: a served line, over a pty or over TCP."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from typing import Any

import pytest

from firmware_sim.line import SimLine
from firmware_sim.meters import SimMeter
from firmware_sim.serve import LineHandle, run_line

Serve = Callable[..., LineHandle]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """``serve(meters, baudrate=9600, parity="E", **line_kwargs)`` -> a running LineHandle."""
    with ExitStack() as stack:

        def start(meters: Sequence[SimMeter], **kwargs: Any) -> LineHandle:
            pty = kwargs.pop("pty", True)
            tcp_port = kwargs.pop("tcp_port", 0)
            kwargs.setdefault("baudrate", 9600)
            kwargs.setdefault("parity", "E")
            line = SimLine(meters=meters, **kwargs)
            return stack.enter_context(run_line(line, pty=pty, tcp_port=tcp_port))

        yield start


@pytest.fixture(params=["pty", "tcp"])
def transport(request: pytest.FixtureRequest) -> str:
    """Run a test once over the pty and once over socket://."""
    return str(request.param)


def url_of(handle: LineHandle, transport: str) -> str:
    url = handle.pty_path if transport == "pty" else handle.tcp_url
    assert url is not None
    return url
