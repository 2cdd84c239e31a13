"""Tier counters per account *per period*: the ``tier_usage`` table. Revises 0012.

An account kept one tier counter per utility, of "the current period" only: once one meter's reading
moved it into June, another meter's reading still partly in May was priced from 0 kWh, and June then
restarted without the first meter's June use. Each (account, utility, period) now has its own row.
The existing counters are copied over (electricity and water), then the account's four counter
columns are dropped, and so is ``project.tier_reset``, which nothing ever read (a tariff version
carries its own reset).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 18:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cloud.models.base import MicroDecimal

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tier_usage",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("utility", sa.String(length=16), nullable=False),
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("used", MicroDecimal(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["account.id"], name=op.f("fk_tier_usage_account_id_account")
        ),
        sa.PrimaryKeyConstraint("account_id", "utility", "period", name=op.f("pk_tier_usage")),
    )
    op.execute(
        "INSERT INTO tier_usage (account_id, utility, period, used) "
        "SELECT id, 'electric', tier_period, tier_usage FROM account WHERE tier_period <> ''"
    )
    op.execute(
        "INSERT INTO tier_usage (account_id, utility, period, used) "
        "SELECT id, 'water', water_tier_period, water_tier_usage FROM account WHERE water_tier_period <> ''"
    )
    with op.batch_alter_table("account") as batch:
        batch.drop_column("water_tier_usage")
        batch.drop_column("water_tier_period")
        batch.drop_column("tier_usage")
        batch.drop_column("tier_period")
    with op.batch_alter_table("project") as batch:
        batch.drop_column("tier_reset")


def downgrade() -> None:
    with op.batch_alter_table("project") as batch:
        batch.add_column(
            sa.Column("tier_reset", sa.String(length=16), nullable=False, server_default="monthly")
        )
    with op.batch_alter_table("account") as batch:
        batch.add_column(sa.Column("tier_period", sa.String(length=16), nullable=False, server_default=""))
        batch.add_column(sa.Column("tier_usage", MicroDecimal(), nullable=False, server_default="0"))
        batch.add_column(
            sa.Column("water_tier_period", sa.String(length=16), nullable=False, server_default="")
        )
        batch.add_column(sa.Column("water_tier_usage", MicroDecimal(), nullable=False, server_default="0"))
    for utility, period, usage in (
        ("electric", "tier_period", "tier_usage"),
        ("water", "water_tier_period", "water_tier_usage"),
    ):
        latest = f"SELECT MAX(t.period) FROM tier_usage t WHERE t.account_id = account.id AND t.utility = '{utility}'"
        op.execute(
            f"UPDATE account SET {period} = COALESCE(({latest}), ''), {usage} = COALESCE((SELECT t.used FROM "
            f"tier_usage t WHERE t.account_id = account.id AND t.utility = '{utility}' AND t.period = ({latest})), 0)"
        )
    op.drop_table("tier_usage")
