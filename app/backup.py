"""`firegrid backup`: a consistent copy of the SQLite database, then of the photos, for an operator's cron.

SQLite is the default deployment, and its live file cannot be copied with `cp`: in WAL mode the last
commits live in `firegrid.db-wal`, and a copy taken while a push commits is torn. The database is copied
through SQLite's backup API in one step, i.e. one read transaction: one snapshot, while the server goes
on writing (a reader never blocks a writer in WAL mode; a stepwise copy would start over at every commit
of another connection and, under a steady load, need never finish). The copy is checked
(`PRAGMA quick_check`) and made a single self-contained file before it takes its final name. It gets a
change-feed epoch of its own: restored, it refuses the phones' cursors, and tells those of the database it
copied that it was restored (app/sync/feed.py mark_backup_copy).

Photos are copied after the database, so every photo a row of the copy names is there: a photo is
published before its row commits (photos/service.py), hence before the snapshot. They are
content-addressed and written once, so a later run copies only the new ones, each hashed on the way:
a photo whose bytes no longer hash to its name is damaged in the store and is named, not copied.
Derivatives are not copied (they are made again on request).

PostgreSQL is backed up with its own tools (pg_dump, before this command); the photos are still copied.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from app.photos.storage import validate_sha256
from app.sync.feed import ChangeFeedState, mark_backup_copy

_HEX2 = re.compile(r"[0-9a-f]{2}")
_CHUNK = 1 << 20
_DB_MODE = 0o600
_PHOTO_MODE = 0o640  # as the store keeps them


class BackupError(Exception):
    """What the operator must act on (exit 2): nothing was half written under a final name."""


@dataclass
class BackupReport:
    database: Path | None = None  # None: not copied (PostgreSQL, or --no-database)
    database_bytes: int = 0
    revision: str | None = None
    photos_copied: int = 0
    photos_present: int = 0  # already in the backup from an earlier run
    photos_damaged: list[str] = field(default_factory=list)


def sqlite_path(database_url: str) -> Path | None:
    """The file of a SQLite URL, or None for another database."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return None
    if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
        raise BackupError(f"FIREGRID_DATABASE_URL {database_url}: not a SQLite file this command can copy")
    return Path(url.database)


@contextmanager
def exclusive(out_dir: Path) -> Iterator[None]:
    """One backup into out_dir at a time (a cron run overtaking a slow one): the second is refused."""
    fd = os.open(out_dir / ".firegrid-backup.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupError(f"another `firegrid backup` into {out_dir} is running") from None
        yield
    finally:
        os.close(fd)  # and with it the lock


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup_database(db_file: Path, out_dir: Path, now: datetime) -> tuple[Path, int, str | None]:
    """Copy the live SQLite database to out_dir/firegrid-<UTC time>.db; (path, bytes, alembic revision)."""
    if not db_file.is_file():
        raise BackupError(f"the database {db_file} does not exist (run `firegrid migrate` first?)")
    stem = f"firegrid-{now:%Y%m%dT%H%M%SZ}"
    dest = out_dir / f"{stem}.db"
    n = 1
    while dest.exists():  # two runs within a second: never overwrite a backup
        n += 1
        dest = out_dir / f"{stem}-{n}.db"
    part = dest.with_name(dest.name + ".part")
    part.unlink(missing_ok=True)  # a run cut short left it: nothing refers to it
    try:
        os.close(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _DB_MODE))  # password hashes, phone numbers
        src = sqlite3.connect(db_file, timeout=10)  # only read; mode=ro could not open a WAL file at rest
        try:
            dst = sqlite3.connect(part)
            try:
                src.backup(dst)  # all pages in one step: one snapshot (see the module's docstring)
                _mark_copy(dst, now)
                # a copy of a WAL database is one too; a backup should be one file, whole by itself
                dst.execute("PRAGMA journal_mode=DELETE")
                check = [row[0] for row in dst.execute("PRAGMA quick_check")]
                revision = _revision(dst)
            finally:
                dst.close()
        finally:
            src.close()
        if check != ["ok"]:  # the copy is page for page: the damage is in the live database
            raise BackupError(f"the database {db_file} fails SQLite's check: {'; '.join(check[:5])}")
        _fsync_path(part)
        part.replace(dest)
        _fsync_path(out_dir)
    except sqlite3.Error as exc:
        part.unlink(missing_ok=True)
        raise BackupError(f"copying the database {db_file}: {exc}") from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return dest, dest.stat().st_size, revision


def _mark_copy(dst: sqlite3.Connection, now: datetime) -> None:
    """The copy's own feed epoch (app/sync/feed.py mark_backup_copy), written through SQLAlchemy on the copy's
    open connection: the column types as the app writes them, and none of the app's connection set-up."""
    engine = sa.create_engine("sqlite://", creator=lambda: dst, poolclass=sa.pool.StaticPool)
    try:
        with engine.connect() as conn:
            if sa.inspect(conn).has_table(ChangeFeedState.__tablename__):  # else never migrated: no cursors
                mark_backup_copy(conn, now)
                conn.commit()
    finally:
        engine.dispose(close=False)  # the connection is the caller's


def _revision(conn: sqlite3.Connection) -> str | None:
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.OperationalError:  # never migrated
        return None
    return row[0] if row else None


def _stored_photos(root: Path):
    """(name, path) of every photo in a filesystem store: root/ab/cd/<sha256>."""
    for ab in sorted(os.scandir(root), key=lambda e: e.name) if root.is_dir() else ():
        if not (_HEX2.fullmatch(ab.name) and ab.is_dir(follow_symlinks=False)):
            continue  # tmp/, derivatives/
        for cd in sorted(os.scandir(ab.path), key=lambda e: e.name):
            if not (_HEX2.fullmatch(cd.name) and cd.is_dir(follow_symlinks=False)):
                continue
            for f in os.scandir(cd.path):
                try:
                    validate_sha256(f.name)
                except ValueError:
                    continue
                if f.name.startswith(ab.name + cd.name) and f.is_file(follow_symlinks=False):
                    yield f.name, Path(f.path)


def _copy_verified(src: Path, name: str, tmp: Path) -> bool:
    """Copy src to tmp, fsynced, hashing on the way: False (and no tmp) if the bytes do not hash to name."""
    h = hashlib.sha256()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _PHOTO_MODE)
    with open(src, "rb") as fin, open(fd, "wb") as fout:
        while chunk := fin.read(_CHUNK):
            h.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    if h.hexdigest() != name:
        tmp.unlink()
        return False
    return True


def backup_photos(store_root: Path, out_dir: Path, report: BackupReport,
                  progress: Callable[[BackupReport], None] | None = None) -> None:
    """Copy the photos not yet in out_dir/blobs (same layout as the store), each verified by its hash."""
    dest_root = out_dir / "blobs"
    tmp_dir = dest_root / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    for left in tmp_dir.glob("*.part"):  # a run cut short: those copies never took their names
        left.unlink(missing_ok=True)
    to_sync: set[Path] = set()  # directories that got an entry: fsynced once each, at the end
    for name, path in _stored_photos(store_root):
        target = dest_root / name[:2] / name[2:4] / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        if target.is_file() and target.stat().st_size == size:
            report.photos_present += 1
            continue
        tmp = tmp_dir / f"{name}.part"
        if not _copy_verified(path, name, tmp):
            report.photos_damaged.append(name)
            continue
        for d in (target.parent.parent, target.parent):
            if not d.is_dir():
                d.mkdir(parents=True, exist_ok=True)
                to_sync.add(d.parent)
        tmp.replace(target)  # a damaged or cut-short copy from an earlier run is replaced whole
        to_sync.add(target.parent)
        report.photos_copied += 1
        if progress is not None and report.photos_copied % 1000 == 0:
            progress(report)
    for d in sorted(to_sync, key=lambda p: len(p.parts), reverse=True):
        _fsync_path(d)
