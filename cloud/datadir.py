"""The cloud's private files on disk: the data directory (0700), the token secret and the SQLite
database files (0600).

The data directory holds the SQLite database, which stores every gateway's command-signing key, and
the key that signs API tokens: whoever reads either can trip relays or act as any user. So the
directory is made owner-only, and files in it are created owner-only whatever the umask says; a
looser mode found on start is tightened (with a warning), so an old installation is mended by
upgrading. Nothing here protects against root or the service's own user.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from cloud.settings import DEFAULT_SECRET_KEY, MIN_SECRET_KEY_LENGTH, InsecureSettingsError, Settings

__all__ = [
    "SECRET_FILE",
    "SQLITE_COMPANIONS",
    "private_dir",
    "private_file",
    "private_sqlite_files",
    "token_secret",
]

log = logging.getLogger(__name__)

SECRET_FILE = "secret_key"  # noqa: S105 - a file name
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal", "-writer.lock")
"""Files SQLite (and :mod:`cloud.db`'s writer lock) keep beside a database; they hold its pages too."""

_DIR_MODE = 0o700
_FILE_MODE = 0o600


def _tighten(path: Path, mode: int) -> None:
    current = stat.S_IMODE(path.stat().st_mode)
    if current & ~mode:
        log.warning("%s had mode %o; setting it to %o (owner only)", path, current, mode)
        path.chmod(mode)


def private_dir(path: Path) -> Path:
    """``path`` exists and only its owner may enter it."""
    path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    _tighten(path, _DIR_MODE)
    return path


def private_file(path: Path) -> None:
    """``path`` exists (empty if new) and only its owner may read or write it."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, _FILE_MODE)  # the mode applies only when creating
    os.close(fd)
    _tighten(path, _FILE_MODE)


def private_sqlite_files(database: Path) -> None:
    """Before SQLite opens ``database``: create it owner-only (SQLite gives new files 0644, and its
    ``-wal`` and ``-shm`` files copy the database's mode) and tighten companions left from before."""
    private_file(database)
    for suffix in SQLITE_COMPANIONS:
        companion = database.with_name(database.name + suffix)
        if companion.exists():
            _tighten(companion, _FILE_MODE)


def token_secret(settings: Settings) -> bytes:
    """The key that signs API tokens: ``MF_SECRET_KEY``, else the data directory's generated key.

    Generated once (``meterflow cloud migrate`` or the first start) with :func:`secrets.token_urlsafe`
    and reused afterwards, so tokens survive restarts. Written to a temporary file and hard-linked into
    place, so two processes starting together agree on one key and neither reads a half-written file.
    """
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value().encode()
    path = private_dir(settings.data_dir) / SECRET_FILE
    if not path.exists():
        tmp = path.with_name(f".{SECRET_FILE}.{secrets.token_hex(8)}")
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, _FILE_MODE)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(secrets.token_urlsafe(48) + "\n")
        try:
            os.link(tmp, path)
            log.info("generated the API token secret in %s", path)
        except FileExistsError:
            pass  # another process was first: use its key
        finally:
            tmp.unlink()
    _tighten(path, _FILE_MODE)
    try:
        key = path.read_text(encoding="ascii").strip()
    except UnicodeDecodeError as exc:
        raise InsecureSettingsError(f"{path} is not a key written by Meterflow; delete it") from exc
    if len(key) < MIN_SECRET_KEY_LENGTH or key == DEFAULT_SECRET_KEY:
        raise InsecureSettingsError(
            f"{path} holds the public built-in key or one shorter than {MIN_SECRET_KEY_LENGTH} "
            "characters; delete it to generate one"
        )
    return key.encode()
