"""Managers' own contact details: ``staff_contact`` (phone, official-account openid, language and the
manager notices each staff user opted in to) and ``notification_outbox.user_id`` for a manager
notice's copy per staff user (cloud/services/notify/, docs/notifications.md). Revises 0016.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 23:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | Sequence[str] | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "staff_contact",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("org_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("phone", sa.String(length=20), nullable=False),
        sa.Column("official_openid", sa.String(length=128), nullable=False),
        sa.Column("lang", sa.String(length=8), nullable=False),
        sa.Column("notices", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisation.id"], name=op.f("fk_staff_contact_org_id_organisation")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["user_account.id"], name=op.f("fk_staff_contact_user_id_user_account")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_staff_contact")),
        sa.UniqueConstraint("user_id", name=op.f("uq_staff_contact_user_id")),
    )
    with op.batch_alter_table("staff_contact", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_staff_contact_org_id"), ["org_id"], unique=False)
    with op.batch_alter_table("notification_outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("user_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_notification_outbox_user_id_user_account"), "user_account", ["user_id"], ["id"]
        )
        batch_op.create_index(batch_op.f("ix_notification_outbox_user_id"), ["user_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("notification_outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notification_outbox_user_id"))
        batch_op.drop_constraint(
            batch_op.f("fk_notification_outbox_user_id_user_account"), type_="foreignkey"
        )
        batch_op.drop_column("user_id")
    with op.batch_alter_table("staff_contact", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_staff_contact_org_id"))
    op.drop_table("staff_contact")
