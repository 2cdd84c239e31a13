"""Tenants pay from their phones: WeChat identities and bindings, WeChat Pay orders and refunds,
notification nonces, the sub-merchants of partner mode and the trade bill's conflicts for finance
(cloud/models/payments.py, docs/payments.md). Revises 0010.

Revision ID: 0012
Revises: 0010
Create Date: 2026-12-07 16:30:00
"""

from collections.abc import Sequence

from alembic import op
import sqlalchemy as sa


revision: str = '0012'
down_revision: str | Sequence[str] | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('pay_notify_nonce',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('nonce', sa.String(length=64), nullable=False),
    sa.Column('stamp', sa.BigInteger(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pay_notify_nonce')),
    sa.UniqueConstraint('nonce', name=op.f('uq_pay_notify_nonce_nonce'))
    )
    with op.batch_alter_table('pay_notify_nonce', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pay_notify_nonce_received_at'), ['received_at'], unique=False)

    op.create_table('wx_user',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('appid', sa.String(length=32), nullable=False),
    sa.Column('openid', sa.String(length=128), nullable=False),
    sa.Column('unionid', sa.String(length=128), nullable=False),
    sa.Column('token_version', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_login_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_wx_user')),
    sa.UniqueConstraint('appid', 'openid', name=op.f('uq_wx_user_appid_openid'))
    )
    op.create_table('pay_merchant',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=True),
    sa.Column('sub_mchid', sa.String(length=32), nullable=False),
    sa.Column('sub_appid', sa.String(length=32), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id'], name=op.f('fk_pay_merchant_org_id_organisation')),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], name=op.f('fk_pay_merchant_project_id_project')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pay_merchant')),
    sa.UniqueConstraint('org_id', 'project_id', name=op.f('uq_pay_merchant_org_id_project_id'))
    )
    with op.batch_alter_table('pay_merchant', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pay_merchant_org_id'), ['org_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_pay_merchant_sub_mchid'), ['sub_mchid'], unique=False)

    op.create_table('pay_conflict',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=True),
    sa.Column('bill_date', sa.Date(), nullable=False),
    sa.Column('kind', sa.String(length=24), nullable=False),
    sa.Column('dedupe_key', sa.String(length=200), nullable=False),
    sa.Column('out_trade_no', sa.String(length=64), nullable=False),
    sa.Column('transaction_id', sa.String(length=64), nullable=False),
    sa.Column('mchid', sa.String(length=32), nullable=False),
    sa.Column('sub_mchid', sa.String(length=32), nullable=False),
    sa.Column('their_fen', sa.BigInteger(), nullable=True),
    sa.Column('our_fen', sa.BigInteger(), nullable=True),
    sa.Column('ledger_key', sa.String(length=200), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('note', sa.String(length=500), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('resolved_by', sa.Integer(), nullable=True),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id'], name=op.f('fk_pay_conflict_org_id_organisation')),
    sa.ForeignKeyConstraint(['resolved_by'], ['user_account.id'], name=op.f('fk_pay_conflict_resolved_by_user_account')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pay_conflict')),
    sa.UniqueConstraint('dedupe_key', name=op.f('uq_pay_conflict_dedupe_key'))
    )
    with op.batch_alter_table('pay_conflict', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pay_conflict_org_id'), ['org_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_pay_conflict_status'), ['status'], unique=False)

    op.create_table('pay_order',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('wx_user_id', sa.Integer(), nullable=True),
    sa.Column('out_trade_no', sa.String(length=32), nullable=False),
    sa.Column('mode', sa.String(length=16), nullable=False),
    sa.Column('appid', sa.String(length=32), nullable=False),
    sa.Column('mchid', sa.String(length=32), nullable=False),
    sa.Column('sub_mchid', sa.String(length=32), nullable=False),
    sa.Column('openid', sa.String(length=128), nullable=False),
    sa.Column('amount_fen', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=8), nullable=False),
    sa.Column('description', sa.String(length=127), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('prepay_id', sa.String(length=64), nullable=False),
    sa.Column('transaction_id', sa.String(length=32), nullable=True),
    sa.Column('ledger_key', sa.String(length=200), nullable=True),
    sa.Column('paid_via', sa.String(length=16), nullable=False),
    sa.Column('refunded_fen', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('paid_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('checked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('checks', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['account.id'], name=op.f('fk_pay_order_account_id_account')),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id'], name=op.f('fk_pay_order_org_id_organisation')),
    sa.ForeignKeyConstraint(['project_id'], ['project.id'], name=op.f('fk_pay_order_project_id_project')),
    sa.ForeignKeyConstraint(['wx_user_id'], ['wx_user.id'], name=op.f('fk_pay_order_wx_user_id_wx_user')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pay_order')),
    sa.UniqueConstraint('out_trade_no', name=op.f('uq_pay_order_out_trade_no')),
    sa.UniqueConstraint('transaction_id', name=op.f('uq_pay_order_transaction_id'))
    )
    with op.batch_alter_table('pay_order', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pay_order_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_pay_order_org_id'), ['org_id'], unique=False)
        batch_op.create_index('ix_pay_order_state_created', ['state', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_pay_order_wx_user_id'), ['wx_user_id'], unique=False)

    op.create_table('payer_binding',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('wx_user_id', sa.Integer(), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('method', sa.String(length=16), nullable=False),
    sa.Column('bound_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('unbound_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['account.id'], name=op.f('fk_payer_binding_account_id_account')),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id'], name=op.f('fk_payer_binding_org_id_organisation')),
    sa.ForeignKeyConstraint(['wx_user_id'], ['wx_user.id'], name=op.f('fk_payer_binding_wx_user_id_wx_user')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payer_binding'))
    )
    with op.batch_alter_table('payer_binding', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_payer_binding_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_payer_binding_org_id'), ['org_id'], unique=False)
        batch_op.create_index('ix_payer_binding_user_account', ['wx_user_id', 'account_id'], unique=False)

    op.create_table('pay_refund',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('order_id', sa.Integer(), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('out_refund_no', sa.String(length=64), nullable=False),
    sa.Column('refund_id', sa.String(length=64), nullable=False),
    sa.Column('amount_fen', sa.BigInteger(), nullable=False),
    sa.Column('reason', sa.String(length=200), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('requested_by', sa.Integer(), nullable=True),
    sa.Column('ledger_key', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['account.id'], name=op.f('fk_pay_refund_account_id_account')),
    sa.ForeignKeyConstraint(['order_id'], ['pay_order.id'], name=op.f('fk_pay_refund_order_id_pay_order')),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id'], name=op.f('fk_pay_refund_org_id_organisation')),
    sa.ForeignKeyConstraint(['requested_by'], ['user_account.id'], name=op.f('fk_pay_refund_requested_by_user_account')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pay_refund')),
    sa.UniqueConstraint('out_refund_no', name=op.f('uq_pay_refund_out_refund_no'))
    )
    with op.batch_alter_table('pay_refund', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pay_refund_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_pay_refund_order_id'), ['order_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_pay_refund_org_id'), ['org_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('pay_refund', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pay_refund_org_id'))
        batch_op.drop_index(batch_op.f('ix_pay_refund_order_id'))
        batch_op.drop_index(batch_op.f('ix_pay_refund_account_id'))

    op.drop_table('pay_refund')
    with op.batch_alter_table('payer_binding', schema=None) as batch_op:
        batch_op.drop_index('ix_payer_binding_user_account')
        batch_op.drop_index(batch_op.f('ix_payer_binding_org_id'))
        batch_op.drop_index(batch_op.f('ix_payer_binding_account_id'))

    op.drop_table('payer_binding')
    with op.batch_alter_table('pay_order', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pay_order_wx_user_id'))
        batch_op.drop_index('ix_pay_order_state_created')
        batch_op.drop_index(batch_op.f('ix_pay_order_org_id'))
        batch_op.drop_index(batch_op.f('ix_pay_order_account_id'))

    op.drop_table('pay_order')
    with op.batch_alter_table('pay_conflict', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pay_conflict_status'))
        batch_op.drop_index(batch_op.f('ix_pay_conflict_org_id'))

    op.drop_table('pay_conflict')
    with op.batch_alter_table('pay_merchant', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pay_merchant_sub_mchid'))
        batch_op.drop_index(batch_op.f('ix_pay_merchant_org_id'))

    op.drop_table('pay_merchant')
    op.drop_table('wx_user')
    with op.batch_alter_table('pay_notify_nonce', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pay_notify_nonce_received_at'))

    op.drop_table('pay_notify_nonce')
