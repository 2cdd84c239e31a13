"""The cloud tests' database fixtures (``db_url``: SQLite and PostgreSQL) for whole-stack tests."""

from tests.cloud.conftest import db_url, pg_template, pg_url, sqlite_url

__all__ = ["db_url", "pg_template", "pg_url", "sqlite_url"]
