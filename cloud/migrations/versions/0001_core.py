"""Core schema: hierarchy, devices, accounts, tariffs, ledger, users, audit — and the ledger guards.

The guards make the database itself refuse money that does not add up, on PostgreSQL and SQLite:
- a ``ledger_transaction`` row is inserted after its ``ledger_entry`` legs, and its insert is refused
  unless there are ``entry_count`` (>= 2) legs summing to zero fen;
- a leg added to a transaction that already exists is refused;
- a leg whose transaction never arrives fails the deferred foreign key at commit;
- on PostgreSQL a deferred constraint trigger re-checks every touched transaction at commit;
- UPDATE and DELETE of ledger rows are refused (append-only: corrections are reversals).

Revision ID: 0001
Revises: 
Create Date: 2026-11-23 11:59:02.917300

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0001'
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


_PG_GUARDS = [
    """
    CREATE FUNCTION mf_ledger_transaction_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE legs integer; total bigint;
    BEGIN
        SELECT count(*), coalesce(sum(amount_fen), 0) INTO legs, total
          FROM ledger_entry WHERE transaction_id = NEW.id;
        IF legs < 2 OR legs <> NEW.entry_count OR total <> 0 THEN
            RAISE EXCEPTION 'ledger transaction % refused: % legs (declared %), sum % fen (must be 0)',
                NEW.id, legs, NEW.entry_count, total USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END $$
    """,
    """
    CREATE TRIGGER ledger_transaction_balanced BEFORE INSERT ON ledger_transaction
        FOR EACH ROW EXECUTE FUNCTION mf_ledger_transaction_balanced()
    """,
    """
    CREATE FUNCTION mf_ledger_entry_open() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF EXISTS (SELECT 1 FROM ledger_transaction WHERE id = NEW.transaction_id) THEN
            RAISE EXCEPTION 'ledger transaction % is closed: no leg may be added', NEW.transaction_id
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END $$
    """,
    """
    CREATE TRIGGER ledger_entry_open BEFORE INSERT ON ledger_entry
        FOR EACH ROW EXECUTE FUNCTION mf_ledger_entry_open()
    """,
    """
    CREATE FUNCTION mf_ledger_entry_balanced_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE legs integer; total bigint; declared integer;
    BEGIN
        SELECT entry_count INTO declared FROM ledger_transaction WHERE id = NEW.transaction_id;
        SELECT count(*), coalesce(sum(amount_fen), 0) INTO legs, total
          FROM ledger_entry WHERE transaction_id = NEW.transaction_id;
        IF declared IS NULL OR legs <> declared OR total <> 0 THEN
            RAISE EXCEPTION 'ledger transaction % refused at commit: % legs (declared %), sum % fen',
                NEW.transaction_id, legs, declared, total USING ERRCODE = 'check_violation';
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE CONSTRAINT TRIGGER ledger_entry_balanced_at_commit AFTER INSERT ON ledger_entry
        DEFERRABLE INITIALLY DEFERRED
        FOR EACH ROW EXECUTE FUNCTION mf_ledger_entry_balanced_at_commit()
    """,
    """
    CREATE FUNCTION mf_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '% is append-only: % refused (correct by reversal)', TG_TABLE_NAME, TG_OP
            USING ERRCODE = 'check_violation';
    END $$
    """,
    """
    CREATE TRIGGER ledger_entry_append_only BEFORE UPDATE OR DELETE ON ledger_entry
        FOR EACH ROW EXECUTE FUNCTION mf_ledger_append_only()
    """,
    """
    CREATE TRIGGER ledger_transaction_append_only BEFORE UPDATE OR DELETE ON ledger_transaction
        FOR EACH ROW EXECUTE FUNCTION mf_ledger_append_only()
    """,
    """
    CREATE TRIGGER ledger_entry_no_truncate BEFORE TRUNCATE ON ledger_entry
        FOR EACH STATEMENT EXECUTE FUNCTION mf_ledger_append_only()
    """,
    """
    CREATE TRIGGER ledger_transaction_no_truncate BEFORE TRUNCATE ON ledger_transaction
        FOR EACH STATEMENT EXECUTE FUNCTION mf_ledger_append_only()
    """,
]

_PG_DROP = [
    "DROP TRIGGER IF EXISTS ledger_transaction_no_truncate ON ledger_transaction",
    "DROP TRIGGER IF EXISTS ledger_entry_no_truncate ON ledger_entry",
    "DROP TRIGGER IF EXISTS ledger_transaction_append_only ON ledger_transaction",
    "DROP TRIGGER IF EXISTS ledger_entry_append_only ON ledger_entry",
    "DROP TRIGGER IF EXISTS ledger_entry_balanced_at_commit ON ledger_entry",
    "DROP TRIGGER IF EXISTS ledger_entry_open ON ledger_entry",
    "DROP TRIGGER IF EXISTS ledger_transaction_balanced ON ledger_transaction",
    "DROP FUNCTION IF EXISTS mf_ledger_append_only()",
    "DROP FUNCTION IF EXISTS mf_ledger_entry_balanced_at_commit()",
    "DROP FUNCTION IF EXISTS mf_ledger_entry_open()",
    "DROP FUNCTION IF EXISTS mf_ledger_transaction_balanced()",
]

# SQLite has no deferred triggers: the transaction row is the "close" that checks its legs, and the
# deferred foreign key of ledger_entry.transaction_id refuses legs left without a transaction.
_SQLITE_GUARDS = [
    """
    CREATE TRIGGER ledger_transaction_balanced BEFORE INSERT ON ledger_transaction
    WHEN (SELECT count(*) FROM ledger_entry WHERE transaction_id = NEW.id) < 2
      OR (SELECT count(*) FROM ledger_entry WHERE transaction_id = NEW.id) <> NEW.entry_count
      OR (SELECT coalesce(sum(amount_fen), 0) FROM ledger_entry WHERE transaction_id = NEW.id) <> 0
    BEGIN
        SELECT RAISE(ABORT, 'ledger transaction refused: legs missing or not summing to 0 fen');
    END
    """,
    """
    CREATE TRIGGER ledger_entry_open BEFORE INSERT ON ledger_entry
    WHEN EXISTS (SELECT 1 FROM ledger_transaction WHERE id = NEW.transaction_id)
    BEGIN
        SELECT RAISE(ABORT, 'ledger transaction is closed: no leg may be added');
    END
    """,
    """
    CREATE TRIGGER ledger_entry_no_update BEFORE UPDATE ON ledger_entry
    BEGIN SELECT RAISE(ABORT, 'ledger_entry is append-only: UPDATE refused (correct by reversal)'); END
    """,
    """
    CREATE TRIGGER ledger_entry_no_delete BEFORE DELETE ON ledger_entry
    BEGIN SELECT RAISE(ABORT, 'ledger_entry is append-only: DELETE refused (correct by reversal)'); END
    """,
    """
    CREATE TRIGGER ledger_transaction_no_update BEFORE UPDATE ON ledger_transaction
    BEGIN SELECT RAISE(ABORT, 'ledger_transaction is append-only: UPDATE refused'); END
    """,
    """
    CREATE TRIGGER ledger_transaction_no_delete BEFORE DELETE ON ledger_transaction
    BEGIN SELECT RAISE(ABORT, 'ledger_transaction is append-only: DELETE refused'); END
    """,
]

_SQLITE_DROP = [
    f"DROP TRIGGER IF EXISTS {name}"
    for name in (
        "ledger_transaction_no_delete",
        "ledger_transaction_no_update",
        "ledger_entry_no_delete",
        "ledger_entry_no_update",
        "ledger_entry_open",
        "ledger_transaction_balanced",
    )
]


def upgrade() -> None:
    """Upgrade schema."""
    # ### commands auto generated by Alembic - please adjust! ###
    op.create_table('holiday',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('region', sa.String(length=16), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_holiday')),
    sa.UniqueConstraint('region', 'day', name=op.f('uq_holiday_region_day'))
    )
    op.create_table('organisation',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('timezone', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_organisation')),
    sa.UniqueConstraint('name', name=op.f('uq_organisation_name'))
    )
    op.create_table('tariff',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id'], name=op.f('fk_tariff_org_id_organisation')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tariff')),
    sa.UniqueConstraint('org_id', 'name', name=op.f('uq_tariff_org_id_name'))
    )
    with op.batch_alter_table('tariff', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tariff_org_id'), ['org_id'], unique=False)

    op.create_table('project',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('timezone', sa.String(length=64), nullable=False),
    sa.Column('electric_tariff_id', sa.Integer(), nullable=True),
    sa.Column('water_tariff_id', sa.Integer(), nullable=True),
    sa.Column('alarm1_fen', sa.BigInteger(), nullable=False),
    sa.Column('alarm2_fen', sa.BigInteger(), nullable=False),
    sa.Column('alarm3_fen', sa.BigInteger(), nullable=True),
    sa.Column('credit_limit_fen', sa.BigInteger(), nullable=False),
    sa.Column('grace_period_s', sa.Integer(), nullable=False),
    sa.Column('friendly_start', sa.String(length=5), nullable=False),
    sa.Column('friendly_end', sa.String(length=5), nullable=False),
    sa.Column('no_cut_weekends', sa.Boolean(), nullable=False),
    sa.Column('no_cut_holidays', sa.Boolean(), nullable=False),
    sa.Column('stale_after_s', sa.Integer(), nullable=False),
    sa.Column('require_final_notice', sa.Boolean(), nullable=False),
    sa.Column('tier_reset', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['electric_tariff_id'], ['tariff.id'], name=op.f('fk_project_electric_tariff_id_tariff')),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id'], name=op.f('fk_project_org_id_organisation')),
    sa.ForeignKeyConstraint(['water_tariff_id'], ['tariff.id'], name=op.f('fk_project_water_tariff_id_tariff')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_project')),
    sa.UniqueConstraint('org_id', 'name', name=op.f('uq_project_org_id_name'))
    )
    with op.batch_alter_table('project', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_project_org_id'), ['org_id'], unique=False)

    op.create_table('building',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], name=op.f('fk_building_project_id_project')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_building')),
    sa.UniqueConstraint('project_id', 'name', name=op.f('uq_building_project_id_name'))
    )
    with op.batch_alter_table('building', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_building_project_id'), ['project_id'], unique=False)

    op.create_table('gateway',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=True),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('signing_key', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id'], name=op.f('fk_gateway_org_id_organisation')),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], name=op.f('fk_gateway_project_id_project')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_gateway')),
    sa.UniqueConstraint('device_id', name=op.f('uq_gateway_device_id'))
    )
    with op.batch_alter_table('gateway', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_gateway_org_id'), ['org_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_gateway_project_id'), ['project_id'], unique=False)

    op.create_table('floor',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('building_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('level', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['building_id'], ['building.id'], name=op.f('fk_floor_building_id_building')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_floor')),
    sa.UniqueConstraint('building_id', 'name', name=op.f('uq_floor_building_id_name'))
    )
    with op.batch_alter_table('floor', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_floor_building_id'), ['building_id'], unique=False)

    op.create_table('room',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('floor_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.ForeignKeyConstraint(['floor_id'], ['floor.id'], name=op.f('fk_room_floor_id_floor')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_room')),
    sa.UniqueConstraint('floor_id', 'name', name=op.f('uq_room_floor_id_name'))
    )
    with op.batch_alter_table('room', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_room_floor_id'), ['floor_id'], unique=False)

    op.create_table('meter',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('gateway_id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('room_id', sa.Integer(), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('protocol', sa.String(length=16), nullable=False),
    sa.Column('model', sa.String(length=64), nullable=False),
    sa.Column('line', sa.String(length=64), nullable=False),
    sa.Column('address', sa.String(length=32), nullable=False),
    sa.Column('circuit', sa.Integer(), nullable=True),
    sa.Column('ct_ratio', sa.Integer(), nullable=False),
    sa.Column('prepay_mode', sa.String(length=16), nullable=False),
    sa.Column('protected', sa.Boolean(), nullable=False),
    sa.Column('tariff_id', sa.Integer(), nullable=True),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('installed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('removed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('replaced_by_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['gateway_id'], ['gateway.id'], name=op.f('fk_meter_gateway_id_gateway')),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id'], name=op.f('fk_meter_org_id_organisation')),
    sa.ForeignKeyConstraint(['replaced_by_id'], ['meter.id'], name=op.f('fk_meter_replaced_by_id_meter')),
    sa.ForeignKeyConstraint(['room_id'], ['room.id'], name=op.f('fk_meter_room_id_room')),
    sa.ForeignKeyConstraint(['tariff_id'], ['tariff.id'], name=op.f('fk_meter_tariff_id_tariff')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_meter')),
    sa.UniqueConstraint('gateway_id', 'device_id', name=op.f('uq_meter_gateway_id_device_id'))
    )
    with op.batch_alter_table('meter', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_meter_gateway_id'), ['gateway_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_meter_org_id'), ['org_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_meter_room_id'), ['room_id'], unique=False)

    op.create_table('tenant',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('phone', sa.String(length=32), nullable=False),
    sa.Column('room_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id'], name=op.f('fk_tenant_org_id_organisation')),
    sa.ForeignKeyConstraint(['room_id'], ['room.id'], name=op.f('fk_tenant_room_id_room')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tenant'))
    )
    with op.batch_alter_table('tenant', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tenant_org_id'), ['org_id'], unique=False)

    op.create_table('account',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=True),
    sa.Column('number', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('billing_mode', sa.String(length=16), nullable=False),
    sa.Column('balance_fen', sa.BigInteger(), nullable=False),
    sa.Column('residue_millifen', sa.BigInteger(), nullable=False),
    sa.Column('tier_period', sa.String(length=16), nullable=False),
    sa.Column('tier_usage', sa.BigInteger(), nullable=False),
    sa.Column('protected', sa.Boolean(), nullable=False),
    sa.Column('credit_limit_fen', sa.BigInteger(), nullable=True),
    sa.Column('opened_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id'], name=op.f('fk_account_org_id_organisation')),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], name=op.f('fk_account_project_id_project')),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], name=op.f('fk_account_tenant_id_tenant')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_account')),
    sa.UniqueConstraint('org_id', 'number', name=op.f('uq_account_org_id_number'))
    )
    with op.batch_alter_table('account', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_account_org_id'), ['org_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_account_project_id'), ['project_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_account_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('user_account',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=True),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('display_name', sa.String(length=200), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=True),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('token_version', sa.Integer(), nullable=False),
    sa.Column('failed_logins', sa.Integer(), nullable=False),
    sa.Column('locked_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id'], name=op.f('fk_user_account_org_id_organisation')),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenant.id'], name=op.f('fk_user_account_tenant_id_tenant')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_user_account')),
    sa.UniqueConstraint('username', name=op.f('uq_user_account_username'))
    )
    with op.batch_alter_table('user_account', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_user_account_org_id'), ['org_id'], unique=False)

    op.create_table('account_meter',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('meter_id', sa.Integer(), nullable=False),
    sa.Column('linked_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('unlinked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['account.id'], name=op.f('fk_account_meter_account_id_account')),
    sa.ForeignKeyConstraint(['meter_id'], ['meter.id'], name=op.f('fk_account_meter_meter_id_meter')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_account_meter'))
    )
    with op.batch_alter_table('account_meter', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_account_meter_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_account_meter_meter_id'), ['meter_id'], unique=False)

    op.create_table('audit_log',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=True),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('target_type', sa.String(length=32), nullable=False),
    sa.Column('target_id', sa.String(length=64), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.Column('ip', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id'], name=op.f('fk_audit_log_org_id_organisation')),
    sa.ForeignKeyConstraint(['user_id'], ['user_account.id'], name=op.f('fk_audit_log_user_id_user_account')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log'))
    )
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_log_action'), ['action'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_log_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_log_org_id'), ['org_id'], unique=False)

    op.create_table('ledger_account',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['account.id'], name=op.f('fk_ledger_account_account_id_account')),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id'], name=op.f('fk_ledger_account_org_id_organisation')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger_account')),
    sa.UniqueConstraint('account_id', name=op.f('uq_ledger_account_account_id')),
    sa.UniqueConstraint('org_id', 'code', name=op.f('uq_ledger_account_org_id_code'))
    )
    with op.batch_alter_table('ledger_account', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ledger_account_org_id'), ['org_id'], unique=False)

    op.create_table('ledger_transaction',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('idempotency_key', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('memo', sa.String(length=500), nullable=False),
    sa.Column('receipt_no', sa.String(length=64), nullable=True),
    sa.Column('reverses_id', sa.Uuid(), nullable=True),
    sa.Column('actor_user_id', sa.Integer(), nullable=True),
    sa.Column('entry_count', sa.Integer(), nullable=False),
    sa.Column('effective_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['actor_user_id'], ['user_account.id'], name=op.f('fk_ledger_transaction_actor_user_id_user_account')),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id'], name=op.f('fk_ledger_transaction_org_id_organisation')),
    sa.ForeignKeyConstraint(['reverses_id'], ['ledger_transaction.id'], name=op.f('fk_ledger_transaction_reverses_id_ledger_transaction')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger_transaction')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_ledger_transaction_idempotency_key')),
    sa.UniqueConstraint('reverses_id', name=op.f('uq_ledger_transaction_reverses_id'))
    )
    with op.batch_alter_table('ledger_transaction', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ledger_transaction_effective_at'), ['effective_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_ledger_transaction_org_id'), ['org_id'], unique=False)

    op.create_table('tariff_version',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tariff_id', sa.Integer(), nullable=False),
    sa.Column('effective_from', sa.DateTime(timezone=True), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('created_by', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['created_by'], ['user_account.id'], name=op.f('fk_tariff_version_created_by_user_account')),
    sa.ForeignKeyConstraint(['tariff_id'], ['tariff.id'], name=op.f('fk_tariff_version_tariff_id_tariff')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tariff_version')),
    sa.UniqueConstraint('tariff_id', 'effective_from', name=op.f('uq_tariff_version_tariff_id_effective_from'))
    )
    with op.batch_alter_table('tariff_version', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tariff_version_tariff_id'), ['tariff_id'], unique=False)

    op.create_table('ledger_entry',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('transaction_id', sa.Uuid(), nullable=False),
    sa.Column('ledger_account_id', sa.Integer(), nullable=False),
    sa.Column('amount_fen', sa.BigInteger(), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=True),
    sa.Column('meter_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['account.id'], name=op.f('fk_ledger_entry_account_id_account')),
    sa.ForeignKeyConstraint(['ledger_account_id'], ['ledger_account.id'], name=op.f('fk_ledger_entry_ledger_account_id_ledger_account')),
    sa.ForeignKeyConstraint(['meter_id'], ['meter.id'], name=op.f('fk_ledger_entry_meter_id_meter')),
    sa.ForeignKeyConstraint(['transaction_id'], ['ledger_transaction.id'], name=op.f('fk_ledger_entry_transaction_id_ledger_transaction'), initially='DEFERRED', deferrable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger_entry'))
    )
    with op.batch_alter_table('ledger_entry', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ledger_entry_account_id'), ['account_id'], unique=False)
        batch_op.create_index('ix_ledger_entry_ledger_account_id_id', ['ledger_account_id', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_ledger_entry_transaction_id'), ['transaction_id'], unique=False)

    # ### end Alembic commands ###
    if op.get_bind().dialect.name == "postgresql":
        for statement in _PG_GUARDS:
            op.execute(statement)
    else:
        for statement in _SQLITE_GUARDS:
            op.execute(statement)


def downgrade() -> None:
    """Downgrade schema."""
    if op.get_bind().dialect.name == "postgresql":
        for statement in _PG_DROP:
            op.execute(statement)
    else:
        for statement in _SQLITE_DROP:
            op.execute(statement)
    # ### commands auto generated by Alembic - please adjust! ###
    with op.batch_alter_table('ledger_entry', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ledger_entry_transaction_id'))
        batch_op.drop_index('ix_ledger_entry_ledger_account_id_id')
        batch_op.drop_index(batch_op.f('ix_ledger_entry_account_id'))

    op.drop_table('ledger_entry')
    with op.batch_alter_table('tariff_version', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tariff_version_tariff_id'))

    op.drop_table('tariff_version')
    with op.batch_alter_table('ledger_transaction', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ledger_transaction_org_id'))
        batch_op.drop_index(batch_op.f('ix_ledger_transaction_effective_at'))

    op.drop_table('ledger_transaction')
    with op.batch_alter_table('ledger_account', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ledger_account_org_id'))

    op.drop_table('ledger_account')
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_log_org_id'))
        batch_op.drop_index(batch_op.f('ix_audit_log_created_at'))
        batch_op.drop_index(batch_op.f('ix_audit_log_action'))

    op.drop_table('audit_log')
    with op.batch_alter_table('account_meter', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_account_meter_meter_id'))
        batch_op.drop_index(batch_op.f('ix_account_meter_account_id'))

    op.drop_table('account_meter')
    with op.batch_alter_table('user_account', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_user_account_org_id'))

    op.drop_table('user_account')
    with op.batch_alter_table('account', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_account_tenant_id'))
        batch_op.drop_index(batch_op.f('ix_account_project_id'))
        batch_op.drop_index(batch_op.f('ix_account_org_id'))

    op.drop_table('account')
    with op.batch_alter_table('tenant', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tenant_org_id'))

    op.drop_table('tenant')
    with op.batch_alter_table('meter', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_meter_room_id'))
        batch_op.drop_index(batch_op.f('ix_meter_org_id'))
        batch_op.drop_index(batch_op.f('ix_meter_gateway_id'))

    op.drop_table('meter')
    with op.batch_alter_table('room', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_room_floor_id'))

    op.drop_table('room')
    with op.batch_alter_table('floor', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_floor_building_id'))

    op.drop_table('floor')
    with op.batch_alter_table('gateway', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_gateway_project_id'))
        batch_op.drop_index(batch_op.f('ix_gateway_org_id'))

    op.drop_table('gateway')
    with op.batch_alter_table('building', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_building_project_id'))

    op.drop_table('building')
    with op.batch_alter_table('project', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_project_org_id'))

    op.drop_table('project')
    with op.batch_alter_table('tariff', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tariff_org_id'))

    op.drop_table('tariff')
    op.drop_table('organisation')
    op.drop_table('holiday')
    # ### end Alembic commands ###
