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
