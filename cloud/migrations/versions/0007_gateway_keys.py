"""Gateway signing keys by key id, for rotation with an overlap; config versions. Revises 0006.

Every message that moves a relay or money is sealed with the gateway's key (docs/security.md, "Signed messages and gateway keys").
Keys now rotate: ``gateway_key`` holds several per gateway, each with its id (``kid``), the end of its
overlap (``not_after``) and when the gateway was first seen using it (``seen_at``). The key each
gateway has today becomes its ``k1``; ``gateway.signing_key`` is blanked (it is only the slot a new
gateway's first key arrives in, see ``cloud.models.core.Gateway``). ``gateway.config_version`` numbers
the configs issued to a gateway, which refuses any version not newer than the one in force.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gateway_key",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("gateway_id", sa.Integer(), nullable=False),
        sa.Column("kid", sa.String(length=32), nullable=False),
        sa.Column("secret", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=True),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["gateway_id"], ["gateway.id"], name=op.f("fk_gateway_key_gateway_id_gateway")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gateway_key")),
        sa.UniqueConstraint("gateway_id", "kid", name=op.f("uq_gateway_key_gateway_id_kid")),
    )
    with op.batch_alter_table("gateway_key", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_gateway_key_gateway_id"), ["gateway_id"], unique=False)
    with op.batch_alter_table("gateway") as batch_op:
        batch_op.add_column(sa.Column("config_version", sa.BigInteger(), nullable=False, server_default="0"))
    op.execute(
        "INSERT INTO gateway_key (gateway_id, kid, secret, created_at) "
        "SELECT id, 'k1', signing_key, created_at FROM gateway WHERE signing_key <> ''"
    )
    op.execute("UPDATE gateway SET signing_key = ''")


def downgrade() -> None:
    # the newest key each gateway holds goes back into the single column
    op.execute(
        "UPDATE gateway SET signing_key = coalesce((SELECT k.secret FROM gateway_key k "
        "WHERE k.gateway_id = gateway.id ORDER BY k.id DESC LIMIT 1), '')"
    )
    with op.batch_alter_table("gateway") as batch_op:
        batch_op.drop_column("config_version")
    with op.batch_alter_table("gateway_key", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_gateway_key_gateway_id"))
    op.drop_table("gateway_key")
