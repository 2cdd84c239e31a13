"""A separate tier counter for water on each prepaid account. Revises 0005.

An account that pays for an electricity meter and a water meter counted both toward one tier counter:
kWh and m³ added together, and a monthly electricity reset zeroing a yearly water count. Water now has
its own period and usage (``water_tier_period``, ``water_tier_usage``); the existing counter is
electricity's. Accounts that only ever had water meters carried their water count in the old columns:
it is moved over, so no consumption already counted toward a tier is lost.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 05:35:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cloud.models.base import MicroDecimal

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("account") as batch:
        batch.add_column(sa.Column("water_tier_period", sa.String(length=16), nullable=False, server_default=""))
        batch.add_column(sa.Column("water_tier_usage", MicroDecimal(), nullable=False, server_default="0"))
    # accounts whose linked meters are all water: their counter was water's
    op.execute(
        """
        UPDATE account SET water_tier_period = tier_period, water_tier_usage = tier_usage,
               tier_period = '', tier_usage = 0
         WHERE tier_period <> ''
           AND EXISTS (SELECT 1 FROM account_meter am JOIN meter m ON m.id = am.meter_id
                        WHERE am.account_id = account.id AND m.kind = 'water')
           AND NOT EXISTS (SELECT 1 FROM account_meter am JOIN meter m ON m.id = am.meter_id
                            WHERE am.account_id = account.id AND m.kind <> 'water')
        """
    )


def downgrade() -> None:
    with op.batch_alter_table("account") as batch:
        batch.drop_column("water_tier_usage")
        batch.drop_column("water_tier_period")
