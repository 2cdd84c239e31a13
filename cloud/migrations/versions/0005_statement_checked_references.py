"""The references of readings and ledger legs checked once per statement on PostgreSQL. Revises 0004.

Every billed reading inserts a ``reading`` row and a ledger leg. Their foreign keys (reading →
gateway, meter; leg → ledger account, prepaid account, meter) were each checked by a row-level
trigger running one query per row: ≈ 4–5 µs of server time per key per row, 22 of the 53 µs a
reading cost the database (direct ingest, docs/benchmarks.md). Here the same references are checked
by ``AFTER INSERT ... FOR EACH STATEMENT`` triggers over the statement's transition table — one
anti-join per ``COPY`` or ``INSERT``, however many rows — and the foreign keys are dropped.

What is checked, on insert (and on update of those columns):

- ``reading.gateway_id`` exists in ``gateway``; ``reading.meter_id``, when set, in ``meter``;
- ``ledger_entry.ledger_account_id`` exists in ``ledger_account``, and ``ledger_entry.account_id`` is
  exactly that ledger account's prepaid account (``NULL`` for a counter account) — stronger than the
  foreign key, which only asked that some account exist; ``ledger_entry.meter_id``, when set, exists
  in ``meter``.

A violation raises ``foreign_key_violation`` (SQLSTATE 23503, what the foreign key raised). What a
foreign key did besides: it refused to delete a referenced row. Gateways, meters, prepaid accounts and
ledger accounts are never deleted by the application (they are deactivated or closed); a ``BEFORE
DELETE`` trigger on each refuses the delete outright while anything refers to it, so that still
holds. The deferred foreign key ``ledger_entry.transaction_id`` stays (legs without a transaction row
are refused at commit, see 0003). SQLite keeps its foreign keys (checked in-process, cheap).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 05:00:00
"""

from collections.abc import Sequence

from alembic import op

from cloud.migrations import STATEMENT_CHECKED_REFERENCES

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CHECKS = [
    """
    CREATE FUNCTION mf_reading_references() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE bad record;
    BEGIN
        SELECT n.id, n.gateway_id, n.meter_id INTO bad
          FROM mf_new_readings n
         WHERE NOT EXISTS (SELECT 1 FROM gateway g WHERE g.id = n.gateway_id)
            OR (n.meter_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM meter m WHERE m.id = n.meter_id))
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'reading %: gateway % or meter % does not exist', bad.id, bad.gateway_id, bad.meter_id
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER reading_references_insert AFTER INSERT ON reading
        REFERENCING NEW TABLE AS mf_new_readings
        FOR EACH STATEMENT EXECUTE FUNCTION mf_reading_references()
    """,
    """
    CREATE TRIGGER reading_references_update AFTER UPDATE ON reading
        REFERENCING NEW TABLE AS mf_new_readings
        FOR EACH STATEMENT EXECUTE FUNCTION mf_reading_references()
    """,
    """
    CREATE FUNCTION mf_ledger_entry_references() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE bad record;
    BEGIN
        SELECT n.id, n.ledger_account_id, n.account_id, n.meter_id INTO bad
          FROM mf_new_leg_refs n
          LEFT JOIN ledger_account la ON la.id = n.ledger_account_id
         WHERE la.id IS NULL
            OR la.account_id IS DISTINCT FROM n.account_id
            OR (n.meter_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM meter m WHERE m.id = n.meter_id))
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'ledger leg %: ledger account % (prepaid account %) or meter % does not exist '
                'or does not match', bad.id, bad.ledger_account_id, bad.account_id, bad.meter_id
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER ledger_entry_references_insert AFTER INSERT ON ledger_entry
        REFERENCING NEW TABLE AS mf_new_leg_refs
        FOR EACH STATEMENT EXECUTE FUNCTION mf_ledger_entry_references()
    """,
    """
    CREATE TRIGGER ledger_entry_references_update AFTER UPDATE ON ledger_entry
        REFERENCING NEW TABLE AS mf_new_leg_refs
        FOR EACH STATEMENT EXECUTE FUNCTION mf_ledger_entry_references()
    """,
    """
    CREATE FUNCTION mf_refuse_referenced_delete() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE referenced boolean;
    BEGIN
        IF TG_TABLE_NAME = 'gateway' THEN
            referenced := EXISTS (SELECT 1 FROM reading WHERE gateway_id = OLD.id);
        ELSIF TG_TABLE_NAME = 'meter' THEN
            referenced := EXISTS (SELECT 1 FROM reading WHERE meter_id = OLD.id)
                OR EXISTS (SELECT 1 FROM ledger_entry WHERE meter_id = OLD.id);
        ELSIF TG_TABLE_NAME = 'account' THEN
            referenced := EXISTS (SELECT 1 FROM ledger_entry WHERE account_id = OLD.id);
        ELSE
            referenced := EXISTS (SELECT 1 FROM ledger_entry WHERE ledger_account_id = OLD.id);
        END IF;
        IF referenced THEN
            RAISE EXCEPTION '% % is referenced by readings or ledger legs: it cannot be deleted',
                TG_TABLE_NAME, OLD.id USING ERRCODE = 'foreign_key_violation';
        END IF;
        RETURN OLD;
    END $$
    """,
    *(
        f"""
        CREATE TRIGGER {table}_refuse_referenced_delete BEFORE DELETE ON {table}
            FOR EACH ROW EXECUTE FUNCTION mf_refuse_referenced_delete()
        """
        for table in ("gateway", "meter", "account", "ledger_account")
    ),
]


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, (table, _, _) in STATEMENT_CHECKED_REFERENCES.items():
        op.drop_constraint(name, table, type_="foreignkey")
    for statement in _CHECKS:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in ("gateway", "meter", "account", "ledger_account"):
        op.execute(f"DROP TRIGGER IF EXISTS {table}_refuse_referenced_delete ON {table}")
    for trigger, table in (
        ("reading_references_insert", "reading"),
        ("reading_references_update", "reading"),
        ("ledger_entry_references_insert", "ledger_entry"),
        ("ledger_entry_references_update", "ledger_entry"),
    ):
        op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")
    for function in ("mf_reading_references", "mf_ledger_entry_references", "mf_refuse_referenced_delete"):
        op.execute(f"DROP FUNCTION IF EXISTS {function}()")
    for name, (table, column, referenced) in STATEMENT_CHECKED_REFERENCES.items():
        op.create_foreign_key(name, table, referenced, [column], ["id"])
