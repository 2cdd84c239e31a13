"""One-time provisioning codes: ``meterflow edge register`` enrols a gateway and its scanned meters
with a code a manager or installer created for a project (cloud/services/provisioning.py). Revises 0012.

Revision ID: 0016
Revises: 0012
Create Date: 2026-12-07 18:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "provisioning_code",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("org_id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("code_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("gateway_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisation.id"], name=op.f("fk_provisioning_code_org_id_organisation")
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["project.id"], name=op.f("fk_provisioning_code_project_id_project")
        ),
        sa.ForeignKeyConstraint(
            ["created_by"], ["user_account.id"], name=op.f("fk_provisioning_code_created_by_user_account")
        ),
        sa.ForeignKeyConstraint(
            ["gateway_id"], ["gateway.id"], name=op.f("fk_provisioning_code_gateway_id_gateway")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provisioning_code")),
        sa.UniqueConstraint("code_sha256", name=op.f("uq_provisioning_code_code_sha256")),
    )
    with op.batch_alter_table("provisioning_code", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_provisioning_code_org_id"), ["org_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_provisioning_code_project_id"), ["project_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("provisioning_code", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_provisioning_code_project_id"))
        batch_op.drop_index(batch_op.f("ix_provisioning_code_org_id"))
    op.drop_table("provisioning_code")
