"""Alembic environment: the URL comes from the caller (``cloud.migrations.upgrade``) or MF_DATABASE_URL."""

from __future__ import annotations

from alembic import context

import cloud.models  # noqa: F401  (registers every table on the metadata)
from cloud.db import make_engine
from cloud.models.base import metadata
from cloud.settings import Settings

config = context.config


def _url() -> str:
    url = config.attributes.get("database_url")
    if url:
        return str(url)
    return Settings().database_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as conn:
            context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
