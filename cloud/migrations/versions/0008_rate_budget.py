"""Physical plausibility over time: a rate budget per meter and a manager's rate per meter. Revises 0007.

``meter_state.rate_budget`` is the token bucket of :mod:`cloud.domain.readings` (what a meter may still
bill beyond its rated rate, at its baseline's time; NULL = full, which is what every existing meter
starts with). ``meter.max_rate_per_hour`` is a manager's figure for one supply (kW, or m³/h for water;
NULL = the model's rated figure from :mod:`cloud.domain.plausibility`). Both are exact decimals stored
as BIGINT millionths like every quantity (:class:`cloud.models.base.MicroDecimal`).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cloud.models.base import MicroDecimal

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("meter_state") as batch:
        batch.add_column(sa.Column("rate_budget", MicroDecimal(), nullable=True))
    with op.batch_alter_table("meter") as batch:
        batch.add_column(sa.Column("max_rate_per_hour", MicroDecimal(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("meter") as batch:
        batch.drop_column("max_rate_per_hour")
    with op.batch_alter_table("meter_state") as batch:
        batch.drop_column("rate_budget")
