"""The one command line: help works and every installed part registers its subcommand."""

from __future__ import annotations

import pytest

from meterflow import __version__
from meterflow.cli import build_parser, main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: meterflow" in capsys.readouterr().out


def test_help_lists_commands() -> None:
    text = build_parser().format_help()
    assert "meterflow" in text


def test_every_part_registers_its_subcommand() -> None:
    text = build_parser([]).format_help()
    for command in ("demo", "cloud", "edge", "sim"):
        assert command in text


def test_a_subcommand_imports_only_its_own_part() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from meterflow.cli import build_parser; build_parser(['edge', 'scan', '--help']); "
        "print('cloud.cli' in sys.modules, 'edge.cli' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
