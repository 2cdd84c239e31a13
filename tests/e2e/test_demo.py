"""``meterflow demo`` end to end: simulated site up, both lines scanned, every meter read, one meter
tripped and restored and one valve closed and opened, each verified by read-back."""

from __future__ import annotations

import io

import pytest

from meterflow.cli import main
from meterflow.demo import demo_site, run_demo


def test_demo_finds_reads_and_controls_every_meter() -> None:
    out = io.StringIO()
    result = run_demo(out)
    text = out.getvalue()
    assert result.ok, text
    site = demo_site()
    expected = {
        protocol: sorted(
            m.address for line in site.lines for m in line.meters if m.effective_protocol == protocol
        )
        for protocol in ("dlt645", "modbus", "cjt188")
    }
    assert {p: sorted(f.address for f in found) for p, found in result.found.items()} == expected
    models = {f.address: f.model for found in result.found.values() for f in found}
    assert models["11"] == "dtsy1352"
    assert models["21"] == models["22"] == "adf300l"
    assert models["202500000204"] == "dtsy1352"
    # 5 DL/T 645 meters + 1 DTSY1352 + 4 + 2 ADF300L circuits + 4 water meters
    assert result.readings == 16
    assert result.verified == [
        "trip 202500000101",
        "close 202500000101",
        "valve_close 20250000000301",
        "valve_open 20250000000301",
    ]
    assert "verified by read-back" in text
    assert "12 meters found, 16 readings, 4 commands verified" in text


def test_demo_is_a_meterflow_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", "--help"])
    assert info.value.code == 0
    assert "simulated meters on two RS-485 lines" in capsys.readouterr().out
