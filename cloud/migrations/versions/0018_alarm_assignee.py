"""Alarms can be handed to a member of staff (issue 14, the console's alarms page): who has it
(``alarm.assigned_to``) and since when (``alarm.assigned_at``). Revises 0017.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 23:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | Sequence[str] | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("alarm", schema=None) as batch_op:
        batch_op.add_column(sa.Column("assigned_to", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_alarm_assigned_to_user_account"), "user_account", ["assigned_to"], ["id"]
        )
        batch_op.create_index(batch_op.f("ix_alarm_assigned_to"), ["assigned_to"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("alarm", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alarm_assigned_to"))
        batch_op.drop_constraint(batch_op.f("fk_alarm_assigned_to_user_account"), type_="foreignkey")
        batch_op.drop_column("assigned_at")
        batch_op.drop_column("assigned_to")
