"""Import contract: cloud/domain is pure — no web, database, cache or MQTT libraries, no other cloud
layers, no clock reads. Checked on the AST of every module and on a fresh interpreter's sys.modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

DOMAIN = Path(__file__).resolve().parents[3] / "cloud" / "domain"
FORBIDDEN = {
    "fastapi", "starlette", "uvicorn", "sqlmodel", "sqlalchemy", "alembic", "psycopg", "aiosqlite",
    "redis", "paho", "amqtt", "apscheduler", "httpx", "requests", "serial", "pymodbus", "asyncio",
}  # fmt: skip
CLOCK_CALLS = {("datetime", "now"), ("datetime", "utcnow"), ("datetime", "today"), ("date", "today"),
               ("time", "time"), ("time", "monotonic")}  # fmt: skip
MODULES = sorted(DOMAIN.glob("*.py"))


def imported_roots(tree: ast.AST) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                out.append((f"cloud.domain.{node.module or ''}", node.lineno))
            else:
                out.append((node.module or "", node.lineno))
    return out


def test_there_are_modules_to_check() -> None:
    names = {p.stem for p in MODULES}
    assert {"errors", "money", "tariffs", "ledger", "readings", "arrears", "calendar", "control"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_imports_nothing_forbidden(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for name, line in imported_roots(tree):
        root = name.split(".")[0]
        assert root not in FORBIDDEN, f"{path.name}:{line} imports {name}"
        if root == "cloud":
            assert name.startswith("cloud.domain"), f"{path.name}:{line} imports another cloud layer: {name}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_reads_no_clock(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Name):
                assert (owner.id, node.func.attr) not in CLOCK_CALLS, (
                    f"{path.name}:{node.lineno} reads the clock with {owner.id}.{node.func.attr}(); pass time in"
                )


def test_fresh_interpreter_loads_no_forbidden_package() -> None:
    """Catches transitive imports too (e.g. through protocol.contract)."""
    modules = ", ".join(f"cloud.domain.{p.stem}" for p in MODULES if p.stem != "__init__")
    code = (
        f"import importlib, sys\nfor m in '{modules}'.split(', '): importlib.import_module(m)\n"
        "print(' '.join(sorted({n.split('.')[0] for n in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    loaded = set(out.stdout.split())
    assert "cloud" in loaded
    assert not (loaded & FORBIDDEN), sorted(loaded & FORBIDDEN)
