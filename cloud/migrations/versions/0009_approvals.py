"""Four eyes: the ``approval`` table (a money movement waiting for a second user). Revises 0008.

A replaced or closed local-prepay meter's money, figured above the approval limit, waits here until a
second, different user of finance or management approves it; nothing moves while it is pending
(``cloud/services/approvals.py``).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "approval",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("org_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=True),
        sa.Column("meter_id", sa.Integer(), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("message_zh", sa.String(length=500), nullable=False),
        sa.Column("message_en", sa.String(length=500), nullable=False),
        sa.Column("requested_by", sa.Integer(), nullable=True),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_reason", sa.String(length=500), nullable=False),
        sa.Column("decided_by", sa.Integer(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decision_reason", sa.String(length=500), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["account.id"], name=op.f("fk_approval_account_id_account")),
        sa.ForeignKeyConstraint(
            ["decided_by"], ["user_account.id"], name=op.f("fk_approval_decided_by_user_account")
        ),
        sa.ForeignKeyConstraint(["meter_id"], ["meter.id"], name=op.f("fk_approval_meter_id_meter")),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisation.id"], name=op.f("fk_approval_org_id_organisation")
        ),
        sa.ForeignKeyConstraint(
            ["requested_by"], ["user_account.id"], name=op.f("fk_approval_requested_by_user_account")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval")),
    )
    with op.batch_alter_table("approval") as batch:
        batch.create_index(batch.f("ix_approval_account_id"), ["account_id"], unique=False)
        batch.create_index(batch.f("ix_approval_org_id"), ["org_id"], unique=False)
        batch.create_index(batch.f("ix_approval_status"), ["status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("approval") as batch:
        batch.drop_index(batch.f("ix_approval_status"))
        batch.drop_index(batch.f("ix_approval_org_id"))
        batch.drop_index(batch.f("ix_approval_account_id"))
    op.drop_table("approval")
