"""Ledger guards on PostgreSQL checked once per statement, not once per row. Revises 0002.

The rules are unchanged (see 0001): a transaction row is refused unless its legs already exist, are at
least two, match ``entry_count`` and sum to zero; no leg may join a transaction that already has its
row; legs left without a transaction row are refused at commit by the deferred foreign key
``ledger_entry.transaction_id``. 0001 checked them with row-level triggers — one query per leg on
insert, one per transaction row, and a deferred constraint trigger running two more queries per leg
at commit — which made the guards the largest server-side cost of billing a batch of readings. Here
the same checks run as ``AFTER INSERT ... FOR EACH STATEMENT`` triggers over the statement's
transition table: one set-based query per INSERT statement, however many rows it carries.

The deferred per-leg check is dropped, not replaced: with the three rules above it could not fail
(legs are complete when their transaction row is inserted and none can be added afterwards; the
deferred foreign key catches legs that never get a row). SQLite keeps 0001's row-level triggers (it
has no statement-level ones; its triggers run in-process and cost far less).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 01:20:00

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


_DROP_ROW_GUARDS = [
    "DROP TRIGGER IF EXISTS ledger_entry_balanced_at_commit ON ledger_entry",
    "DROP TRIGGER IF EXISTS ledger_entry_open ON ledger_entry",
    "DROP TRIGGER IF EXISTS ledger_transaction_balanced ON ledger_transaction",
]

_STATEMENT_GUARDS = [
    """
    CREATE FUNCTION mf_ledger_entries_open() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE closed uuid;
    BEGIN
        SELECT n.transaction_id INTO closed
          FROM mf_new_legs n JOIN ledger_transaction t ON t.id = n.transaction_id
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'ledger transaction % is closed: no leg may be added', closed
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER ledger_entry_open AFTER INSERT ON ledger_entry
        REFERENCING NEW TABLE AS mf_new_legs
        FOR EACH STATEMENT EXECUTE FUNCTION mf_ledger_entries_open()
    """,
    """
    CREATE FUNCTION mf_ledger_transactions_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE bad record;
    BEGIN
        SELECT t.id, t.entry_count, s.legs, s.total INTO bad
          FROM mf_new_txns t
          CROSS JOIN LATERAL (
                SELECT count(*) AS legs, coalesce(sum(e.amount_fen), 0) AS total
                  FROM ledger_entry e WHERE e.transaction_id = t.id
          ) s
         WHERE s.legs < 2 OR s.legs <> t.entry_count OR s.total <> 0
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'ledger transaction % refused: % legs (declared %), sum % fen (must be 0)',
                bad.id, bad.legs, bad.entry_count, bad.total USING ERRCODE = 'check_violation';
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER ledger_transaction_balanced AFTER INSERT ON ledger_transaction
        REFERENCING NEW TABLE AS mf_new_txns
        FOR EACH STATEMENT EXECUTE FUNCTION mf_ledger_transactions_balanced()
    """,
]

# 0001's row-level guards, restored by a downgrade (their functions were never dropped).
_ROW_GUARDS = [
    """
    CREATE TRIGGER ledger_transaction_balanced BEFORE INSERT ON ledger_transaction
        FOR EACH ROW EXECUTE FUNCTION mf_ledger_transaction_balanced()
    """,
    """
    CREATE TRIGGER ledger_entry_open BEFORE INSERT ON ledger_entry
        FOR EACH ROW EXECUTE FUNCTION mf_ledger_entry_open()
    """,
    """
    CREATE CONSTRAINT TRIGGER ledger_entry_balanced_at_commit AFTER INSERT ON ledger_entry
        DEFERRABLE INITIALLY DEFERRED
        FOR EACH ROW EXECUTE FUNCTION mf_ledger_entry_balanced_at_commit()
    """,
]


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for statement in _DROP_ROW_GUARDS + _STATEMENT_GUARDS:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for statement in _DROP_ROW_GUARDS:
        op.execute(statement)
    op.execute("DROP FUNCTION IF EXISTS mf_ledger_transactions_balanced()")
    op.execute("DROP FUNCTION IF EXISTS mf_ledger_entries_open()")
    for statement in _ROW_GUARDS:
        op.execute(statement)
