"""Dead letters keep a bounded prefix of the payload with its size and SHA-256. Revises 0009.

A message on the broker is anyone-with-publish-rights' choice, and the dead-letter table stored each
refused one whole (up to the broker's packet limit) and served it back whole. From now on a dead
letter keeps the first 4096 bytes (``cloud.services.dead_letters.PREFIX_BYTES``), ``payload_size``
and ``payload_sha256``. Existing rows get their size and hash computed from what they hold, are cut
to the prefix, and only the newest 10,000 (``MAX_ROWS``) are kept, as the ingest keeps them from now on.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08 10:00:00
"""

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PREFIX_BYTES = 4096  # the values of cloud/services/dead_letters.py when this was written
_MAX_ROWS = 10_000


def upgrade() -> None:
    with op.batch_alter_table("dead_letter") as batch:
        batch.add_column(sa.Column("payload_size", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("payload_sha256", sa.String(length=64), nullable=False, server_default=""))
    conn = op.get_bind()
    letters = sa.table(
        "dead_letter",
        sa.column("id", sa.BigInteger()),
        sa.column("payload", sa.LargeBinary()),
        sa.column("payload_size", sa.BigInteger()),
        sa.column("payload_sha256", sa.String()),
    )
    newest = conn.execute(sa.select(sa.func.max(letters.c.id))).scalar()
    if newest is None:
        return
    conn.execute(sa.delete(letters).where(letters.c.id <= newest - _MAX_ROWS))
    last = 0
    while True:  # one row at a time: an old row may be megabytes
        row = conn.execute(
            sa.select(letters.c.id, letters.c.payload)
            .where(letters.c.id > last)
            .order_by(letters.c.id)
            .limit(1)
        ).first()
        if row is None:
            break
        last, payload = row[0], bytes(row[1])
        conn.execute(
            sa.update(letters)
            .where(letters.c.id == last)
            .values(
                payload=payload[:_PREFIX_BYTES],
                payload_size=len(payload),
                payload_sha256=hashlib.sha256(payload).hexdigest(),
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("dead_letter") as batch:
        batch.drop_column("payload_sha256")
        batch.drop_column("payload_size")
