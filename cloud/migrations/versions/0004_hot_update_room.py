"""Room on each page for the rows every reading updates (PostgreSQL ``fillfactor``). Revises 0003.

Every billed reading updates its meter's ``meter_state`` row and its account's ``account`` row (the
balance cache, the residue, the tier counter). With the default fillfactor of 100 the pages are full,
so each update writes the new row version on another page and adds an entry to every index of the
table. At 50, the new version fits on the same page and none of the updated columns is indexed, so
PostgreSQL makes it a heap-only (HOT) update: no index is touched and the old version is pruned in
place. Measured on the ingest benchmark (2 cores): the batch's account update 11.0 → 2.6 µs per
reading, the meter-state update 4.8 → 2.1 µs (docs/benchmarks.md). ``account_state`` is updated by
the arrears policy on every evaluation, so it gets the same room. The cost is disk: these tables
are small (one row per meter or account).

Existing pages keep their layout until the table is rewritten (``VACUUM FULL`` or ``CLUSTER``);
new and updated rows use the room at once. SQLite has no such setting: nothing to do there.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 04:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("account", "meter_state", "account_state")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in _TABLES:
        op.execute(f"ALTER TABLE {table} SET (fillfactor = 50)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in _TABLES:
        op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
