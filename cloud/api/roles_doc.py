"""docs/roles.md's table, rendered from :mod:`cloud.api.access` (``python -m cloud.api.roles_doc
--write`` rewrites the generated section in place; ``tests/cloud/test_access_matrix.py`` fails when the
file and the code differ)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cloud.api.access import APPROVER_ROLES, FIGURE_ROLES, PAGE_PREFIXES, POLICY, Rule, alarm_kinds_for
from cloud.models import Role

__all__ = ["BEGIN", "END", "generated_section", "main", "render_markdown", "write_docs"]


_COLUMNS = (Role.ADMIN, Role.MANAGER, Role.FINANCE, Role.INSTALLER, Role.TENANT)
BEGIN = "<!-- roles table: generated from cloud/api/access.py (python -m cloud.api.roles_doc --write) -->"
END = "<!-- end of the generated roles table -->"


def _cell(rule: Rule, role: Role) -> str:
    if rule.public:
        return "public"
    if role not in rule.roles:
        return "—"
    if rule.platform:
        return "platform"
    if role is Role.TENANT and rule.own:
        return "own"
    return "✓"


def render_markdown() -> str:
    """The generated part of docs/roles.md: the role × route table and the decisions inside routes."""
    head = "| method | route (under `/api/v1`) | " + " | ".join(str(r) for r in _COLUMNS) + " | why |"
    lines = [BEGIN, "", head, "| --- | --- |" + " :-: |" * len(_COLUMNS) + " --- |"]
    for (method, path), rule in sorted(POLICY.items(), key=lambda item: (item[0][1], item[0][0])):
        cells = " | ".join(_cell(rule, role) for role in _COLUMNS)
        shown = f"`{path}` (page)" if path.startswith(PAGE_PREFIXES) else f"`{path}`"
        lines.append(f"| {method} | {shown} | {cells} | {rule.why} |")
    kinds = ", ".join(sorted(alarm_kinds_for(Role.INSTALLER) or ()))
    lines += [
        "",
        "Inside routes:",
        "",
        f"- enter a money figure read off a meter (`final_remaining_fen`, `meter_remaining_fen`, "
        f"`remaining_fen`): {', '.join(sorted(str(r) for r in FIGURE_ROLES))}",
        f"- approve or reject a pending approval: {', '.join(sorted(str(r) for r in APPROVER_ROLES))}, "
        "never the user who asked for it",
        f"- alarms an installer sees: {kinds}",
        "",
        END,
    ]
    return "\n".join(lines) + "\n"


def generated_section(text: str) -> str:
    """The part of ``text`` between the markers (both included), or "" when absent."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return ""
    return text[start : end + len(END)] + "\n"


def write_docs(path: Path) -> bool:
    """Replace the generated section of ``path``; True when it changed."""
    text = path.read_text(encoding="utf-8")
    old = generated_section(text)
    if not old:
        raise SystemExit(f"{path} has no generated section ({BEGIN})")
    new = text.replace(old, render_markdown())
    path.write_text(new, encoding="utf-8")
    return new != text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print (or --write into docs/roles.md) the roles table.")
    parser.add_argument("--write", action="store_true", help="update docs/roles.md in place")
    parser.add_argument(
        "--docs", type=Path, default=Path(__file__).resolve().parents[2] / "docs" / "roles.md"
    )
    args = parser.parse_args(argv)
    if args.write:
        print(f"{args.docs}: {'updated' if write_docs(args.docs) else 'unchanged'}")
    else:
        print(render_markdown(), end="")


if __name__ == "__main__":
    main()
