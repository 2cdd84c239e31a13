"""Notifications are sent: the outbox gets a lease-based claim, attempts and a channel position; one
``notification_delivery`` per (event, channel, recipient); per-project channel settings, per-account
contacts and one-shot subscribe consents (cloud/models/notify.py, docs/notifications.md). Revises 0012.

Revision ID: 0014
Revises: 0012
Create Date: 2026-12-07 18:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("notification_outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("channel_pos", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("next_try_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=64), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_error", sa.String(length=500), nullable=False, server_default=""))
        batch_op.create_index(batch_op.f("ix_notification_outbox_next_try_at"), ["next_try_at"], unique=False)

    op.create_table(
        "notification_delivery",
        sa.Column("id", _BIG_ID, nullable=False),
        sa.Column("outbox_id", _BIG_ID, nullable=False),
        sa.Column("org_id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("recipient", sa.String(length=128), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("vendor_id", sa.String(length=64), nullable=False),
        sa.Column("error", sa.String(length=500), nullable=False),
        sa.Column("receipt", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["outbox_id"],
            ["notification_outbox.id"],
            name=op.f("fk_notification_delivery_outbox_id_notification_outbox"),
        ),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisation.id"], name=op.f("fk_notification_delivery_org_id_organisation")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_delivery")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_notification_delivery_idempotency_key")),
    )
    with op.batch_alter_table("notification_delivery", schema=None) as batch_op:
        for column in ("outbox_id", "org_id", "status", "vendor_id"):
            batch_op.create_index(batch_op.f(f"ix_notification_delivery_{column}"), [column], unique=False)

    op.create_table(
        "notify_settings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("org_id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("channels", sa.JSON(), nullable=False),
        sa.Column("sms_sign", sa.String(length=32), nullable=False),
        sa.Column("templates", sa.JSON(), nullable=False),
        sa.Column("quiet_start", sa.String(length=5), nullable=False),
        sa.Column("quiet_end", sa.String(length=5), nullable=False),
        sa.Column("lang", sa.String(length=8), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisation.id"], name=op.f("fk_notify_settings_org_id_organisation")
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["project.id"], name=op.f("fk_notify_settings_project_id_project")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_settings")),
        sa.UniqueConstraint("project_id", name=op.f("uq_notify_settings_project_id")),
    )
    with op.batch_alter_table("notify_settings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_notify_settings_org_id"), ["org_id"], unique=False)

    op.create_table(
        "notify_contact",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("org_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("phone", sa.String(length=20), nullable=False),
        sa.Column("miniprogram_openid", sa.String(length=128), nullable=False),
        sa.Column("official_openid", sa.String(length=128), nullable=False),
        sa.Column("lang", sa.String(length=8), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["account.id"], name=op.f("fk_notify_contact_account_id_account")
        ),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisation.id"], name=op.f("fk_notify_contact_org_id_organisation")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_contact")),
        sa.UniqueConstraint("account_id", name=op.f("uq_notify_contact_account_id")),
    )
    with op.batch_alter_table("notify_contact", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_notify_contact_org_id"), ["org_id"], unique=False)

    op.create_table(
        "notify_consent",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("org_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("template_id", sa.String(length=64), nullable=False),
        sa.Column("granted", sa.Integer(), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["account.id"], name=op.f("fk_notify_consent_account_id_account")
        ),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisation.id"], name=op.f("fk_notify_consent_org_id_organisation")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_consent")),
        sa.UniqueConstraint(
            "account_id", "template_id", name=op.f("uq_notify_consent_account_id_template_id")
        ),
    )
    with op.batch_alter_table("notify_consent", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_notify_consent_account_id"), ["account_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_notify_consent_org_id"), ["org_id"], unique=False)


def downgrade() -> None:
    op.drop_table("notify_consent")
    op.drop_table("notify_contact")
    op.drop_table("notify_settings")
    op.drop_table("notification_delivery")
    with op.batch_alter_table("notification_outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notification_outbox_next_try_at"))
        for column in ("last_error", "claimed_until", "claimed_by", "next_try_at", "channel_pos", "attempts"):
            batch_op.drop_column(column)
