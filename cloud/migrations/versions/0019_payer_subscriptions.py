"""A payer's consent to each subscribe-message template (cloud/models/payments.py, docs/payments.md).
Revises 0012.

Revision ID: 0019
Revises: 0012
Create Date: 2026-12-07 18:40:00
"""

from collections.abc import Sequence

from alembic import op
import sqlalchemy as sa


revision: str = '0019'
down_revision: str | Sequence[str] | None = '0016'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('payer_subscription',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('wx_user_id', sa.Integer(), nullable=False),
    sa.Column('template_id', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['wx_user_id'], ['wx_user.id'], name=op.f('fk_payer_subscription_wx_user_id_wx_user')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payer_subscription')),
    sa.UniqueConstraint('wx_user_id', 'template_id', name=op.f('uq_payer_subscription_wx_user_id_template_id'))
    )
    with op.batch_alter_table('payer_subscription', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_payer_subscription_wx_user_id'), ['wx_user_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('payer_subscription', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_payer_subscription_wx_user_id'))

    op.drop_table('payer_subscription')
