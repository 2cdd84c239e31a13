"""``meterflow cloud serve | migrate | create-admin``.

Settings come from ``MF_*`` variables (see :mod:`cloud.settings`); ``--database-url`` overrides
``MF_DATABASE_URL`` for one command. Exit codes: 0 done, 1 refused (e.g. username taken), 2 bad usage
or configuration.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import inspect
from sqlalchemy.exc import SQLAlchemyError

from cloud.domain.errors import CloudError
from cloud.settings import InsecureSettingsError, Settings

__all__ = ["register"]

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    cloud = subparsers.add_parser("cloud", help="the cloud service: API, ingest, billing, control")
    sub = cloud.add_subparsers(dest="cloud_command", metavar="ACTION")
    cloud.set_defaults(func=lambda _args: _help(cloud))

    serve = sub.add_parser(
        "serve", help="run the API (and, unless MF_RUN_BACKGROUND=false, ingest/control/jobs)"
    )
    serve.add_argument("--host", help="listen address (MF_API_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (MF_API_PORT, default 8000)")
    serve.add_argument("--migrate", action="store_true", help="apply database migrations first")
    serve.add_argument("--no-background", action="store_true", help="API only: no ingest, control or jobs")
    _database_option(serve)
    serve.set_defaults(func=_serve)

    migrate = sub.add_parser("migrate", help="bring the database schema up to date (alembic upgrade head)")
    _database_option(migrate)
    migrate.set_defaults(func=_migrate)

    admin = sub.add_parser("create-admin", help="create an administrator user")
    admin.add_argument("--username", required=True)
    secret = admin.add_mutually_exclusive_group(required=True)
    secret.add_argument("--password-file", type=Path, help="file whose first line is the password")
    secret.add_argument(
        "--password", help="the password (visible in the process list: prefer --password-file)"
    )
    admin.add_argument("--org", help="organisation (created if new); omit for a platform administrator")
    _database_option(admin)
    admin.set_defaults(func=_create_admin)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url", help="SQLAlchemy URL (default MF_DATABASE_URL or SQLite in MF_DATA_DIR)"
    )


def _settings(args: argparse.Namespace) -> Settings | None:
    overrides: dict[str, Any] = {}
    if getattr(args, "database_url", None):
        overrides["database_url"] = args.database_url
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        for error in exc.errors():
            print(f"meterflow cloud: configuration error: {error['msg']}", file=sys.stderr)
        return None


def _migrate(args: argparse.Namespace) -> int:
    from cloud.datadir import token_secret
    from cloud.db import make_engine
    from cloud.migrations import current_revision, head_revision, upgrade

    settings = _settings(args)
    if settings is None:
        return 2
    try:
        token_secret(settings)  # generated here, before any replica starts, unless MF_SECRET_KEY is set
    except (OSError, InsecureSettingsError) as exc:
        print(f"meterflow cloud migrate: token secret: {exc}", file=sys.stderr)
        return 2
    engine = make_engine(settings)  # also creates the SQLite data directory (0700)
    try:
        before = current_revision(engine)
        upgrade(settings.database_url)
        after = current_revision(engine)
    except SQLAlchemyError as exc:
        print(f"meterflow cloud migrate: database error: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(f"database schema: {before or 'empty'} -> {after} (head {head_revision()})")
    return 0


def _read_password(args: argparse.Namespace) -> str | None:
    if args.password is not None:
        return str(args.password)
    try:
        lines = Path(args.password_file).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        print(
            f"meterflow cloud create-admin: cannot read {args.password_file}: {exc.strerror}", file=sys.stderr
        )
        return None
    return lines[0] if lines else ""


def _create_admin(args: argparse.Namespace) -> int:
    from cloud.db import make_engine, make_session_factory, session_scope
    from cloud.services.users import create_admin

    settings = _settings(args)
    password = _read_password(args)
    if settings is None or password is None:
        return 2
    engine = make_engine(settings)
    try:
        if "user_account" not in inspect(engine).get_table_names():
            print(
                "meterflow cloud create-admin: no schema yet; run `meterflow cloud migrate` first",
                file=sys.stderr,
            )
            return 1
        with session_scope(make_session_factory(engine)) as session:
            user = create_admin(session, username=args.username, password=password, org_name=args.org)
            scope = f"organisation {args.org!r}" if args.org else "the platform"
            message = f"created administrator {user.username!r} (id {user.id}) of {scope}"
    except CloudError as exc:
        print(f"meterflow cloud create-admin: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(message)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from cloud.api import build_app, settle_heap, uvicorn_options
    from cloud.migrations import upgrade

    settings = _settings(args)
    if settings is None:
        return 2
    if args.migrate:
        upgrade(settings.database_url)
    try:
        app = build_app(settings, background=settings.run_background and not args.no_background)
    except (OSError, InsecureSettingsError) as exc:
        print(f"meterflow cloud serve: {exc}", file=sys.stderr)
        return 2
    host = args.host or settings.api_host
    port = settings.api_port if args.port is None else args.port
    service = logging.getLogger("cloud")
    if service.getEffectiveLevel() > logging.INFO:
        # a service says what it is doing: the API address, the broker link (connected, refused, lost)
        service.setLevel(logging.INFO)
    log.info("serving the Meterflow API on http://%s:%s (docs at /docs)", host, port)
    settle_heap()
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False, **uvicorn_options())
    return 0
