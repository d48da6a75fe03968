"""`firegrid backup`: a consistent copy of the SQLite database, then of the photos, for an operator's cron.

SQLite is the default deployment, and its live file cannot be copied with `cp`: in WAL mode the last
commits live in `firegrid.db-wal`, and a copy taken while a push commits is torn. The database is copied
through SQLite's backup API in one step, i.e. one read transaction: one snapshot, while the server goes
on writing (a reader never blocks a writer in WAL mode; a stepwise copy would start over at every commit
of another connection and, under a steady load, need never finish). The copy is checked
(`PRAGMA quick_check`), made a single self-contained file, and marked as a backup taken then: its first
start gives its change feed a new epoch, so the phones' cursors of before are refused and told to send
again what they sent since (app/sync/feed.py start_restored).

Photos are copied after the database, so every photo a row of the copy names is there: a photo is
published before its row commits (photos/service.py), hence before the snapshot. They are
content-addressed and written once, so a later run copies only the new ones, each hashed on the way:
a photo whose bytes no longer hash to its name is damaged in the store and is named, not copied; one
whose row is in the database but whose file is in neither the store nor the backup is named too.
Derivatives are not copied (they are made again on request). The database copy takes its final name
last: a run that fails part-way leaves nothing that looks like a whole backup.

PostgreSQL is backed up with its own tools (pg_dump, before this command); the photos are still copied.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from app.photos.models import Blob
from app.photos.storage import FilesystemBlobStore, sha256_file
from app.sync.feed import ChangeFeedState, mark_backup_copy

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
    photos_repaired: list[str] = field(default_factory=list)  # in the backup, not matching their name (--verify)
    photos_damaged: list[str] = field(default_factory=list)  # in the store, not matching their name or unreadable
    photos_lost: list[str] = field(default_factory=list)  # a row names them; in neither store nor backup

    @property
    def failed(self) -> bool:
        return bool(self.photos_damaged or self.photos_lost)


def sqlite_path(database_url: str) -> Path | None:
    """The file of a SQLite URL, or None for another database."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return None
    if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
        raise BackupError(f"FIREGRID_DATABASE_URL {database_url}: not a SQLite file this command can copy")
    return Path(url.database)


def backup(database_url: str, store_root: Path, out_dir: Path, now: datetime, *, photos: bool = True,
           verify: bool = False, progress: Callable[[BackupReport], None] | None = None) -> BackupReport:
    """The whole run (see the module's docstring): the database (SQLite) as out_dir/firegrid-<time>.db, then
    the photos into out_dir/blobs; ``verify``: hash the photos already in the backup too."""
    db_file = sqlite_path(database_url)
    _check_places(store_root, out_dir, photos)
    if db_file is not None and not db_file.is_file():  # before anything is made: a refused run leaves nothing
        raise BackupError(f"the database {db_file} does not exist (run `firegrid migrate` first?)")
    if out_dir.exists() and not out_dir.is_dir():
        raise BackupError(f"--out {out_dir}: not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    report = BackupReport()
    with exclusive(out_dir):
        for left in out_dir.glob("firegrid-*.db.part*"):  # runs cut short: under the lock, none is being written
            left.unlink(missing_ok=True)
        part = dest = None
        try:
            if db_file is not None:
                dest = _free_name(out_dir, now)
                part = dest.with_name(dest.name + ".part")
                report.database_bytes, report.revision = copy_database(db_file, part, now)
            if photos:
                backup_photos(store_root, out_dir, report, verify=verify, progress=progress)
                report.photos_lost = _lost_photos(database_url, store_root, out_dir)
            if part is not None:
                part.replace(dest)  # last: only a run that got this far leaves a backup that looks whole
                _fsync_path(out_dir)
                report.database = dest
        finally:
            if part is not None:
                part.unlink(missing_ok=True)
    return report


def _check_places(store_root: Path, out_dir: Path, photos: bool) -> None:
    if not store_root.is_dir():
        if not photos:
            return
        raise BackupError(f"the photo store {store_root} does not exist (FIREGRID_STORAGE_DIR; the server makes it "
                          "at start-up): nothing to copy the photos from")
    store, out = store_root.resolve(), out_dir.resolve()
    if out == store or out.is_relative_to(store) or store.is_relative_to(out):
        raise BackupError(f"the backup directory {out_dir} and the photo store {store_root} must not contain "
                          "one another: choose a directory on another volume")


def _free_name(out_dir: Path, now: datetime) -> Path:
    # microseconds: two runs within a second sort by name in the order they were taken
    dest = out_dir / f"firegrid-{now:%Y%m%dT%H%M%S.%fZ}.db"
    while dest.exists():  # never overwrite a backup
        dest = dest.with_name(dest.stem + "x.db")
    return dest


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


def copy_database(db_file: Path, part: Path, now: datetime) -> tuple[int, str | None]:
    """Copy the live SQLite database to ``part`` (mode 0600, fsynced); (bytes, alembic revision)."""
    if not db_file.is_file():
        raise BackupError(f"the database {db_file} does not exist (run `firegrid migrate` first?)")
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
    except sqlite3.Error as exc:
        raise BackupError(f"copying the database {db_file}: {exc}") from exc
    if check != ["ok"]:  # the copy is page for page: the damage is in the live database
        raise BackupError(f"the database {db_file} fails SQLite's check: {'; '.join(check[:5])}")
    _fsync_path(part)
    return part.stat().st_size, revision


def _mark_copy(dst: sqlite3.Connection, now: datetime) -> None:
    """The copy marked as a backup taken now (app/sync/feed.py mark_backup_copy), written through SQLAlchemy on
    the copy's open connection: the column types as the app writes them, and none of its connection set-up."""
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


class _Unreadable(Exception):
    pass


def _read_chunks(f) -> Iterator[bytes]:
    """The file's chunks; a read error (EIO: a bad sector) is the photo's damage, not the run's failure."""
    while True:
        try:
            chunk = f.read(_CHUNK)
        except OSError as exc:
            raise _Unreadable() from exc
        if not chunk:
            return
        yield chunk


def _copy_verified(src: Path, name: str, tmp: Path) -> bool:
    """Copy src to tmp, fsynced, hashing on the way: False (and no tmp) if the bytes do not hash to name or
    cannot be read. An error writing the copy (the backup volume full) is the run's: it is raised."""
    h = hashlib.sha256()
    try:
        fin = open(src, "rb")
    except OSError:
        return False
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _PHOTO_MODE)
        with os.fdopen(fd, "wb") as fout:
            for chunk in _read_chunks(fin):
                h.update(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
    except _Unreadable:
        tmp.unlink(missing_ok=True)
        return False
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        fin.close()
    if h.hexdigest() != name:
        tmp.unlink()
        return False
    return True


def backup_photos(store_root: Path, out_dir: Path, report: BackupReport, *, verify: bool = False,
                  progress: Callable[[BackupReport], None] | None = None) -> None:
    """Copy the photos not yet in out_dir/blobs (same layout as the store), each verified by its hash. A copy
    already there counts by its size, unless ``verify``: then it is hashed, and copied again if it no longer
    matches (a bit flipped on the backup volume keeps the size)."""
    dest_root = out_dir / "blobs"
    tmp_dir = dest_root / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    for left in tmp_dir.glob("*.part"):  # a run cut short: those copies never took their names
        left.unlink(missing_ok=True)
    to_sync: set[Path] = set()  # directories that got an entry: fsynced once each, at the end
    for name, path in FilesystemBlobStore(store_root).iter_blobs():
        target = dest_root / name[:2] / name[2:4] / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        repair = False
        if target.is_file() and target.stat().st_size == size:
            if not verify or sha256_file(target) == name:
                report.photos_present += 1
                continue
            repair = True
        tmp = tmp_dir / f"{name}.part"
        if not _copy_verified(path, name, tmp):
            report.photos_damaged.append(name)
            continue
        for d in (target.parent.parent, target.parent):
            if not d.is_dir():
                d.mkdir(parents=True, exist_ok=True)
                to_sync.add(d.parent)
        tmp.replace(target)  # a copy cut short (another size) or found damaged (verify) is replaced whole
        to_sync.add(target.parent)
        if repair:
            report.photos_repaired.append(name)
        else:
            report.photos_copied += 1
        if progress is not None and report.photos_copied % 1000 == 0:
            progress(report)
    for d in sorted(to_sync, key=lambda p: len(p.parts), reverse=True):
        _fsync_path(d)


def _lost_photos(database_url: str, store_root: Path, out_dir: Path) -> list[str]:
    """The photos a ``blobs`` row of the live database names whose file is in neither the store nor the backup
    (one uploaded since the copy was taken is in the store: not lost)."""
    from app.db import make_engine

    lost = []
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            for (name,) in conn.execution_options(yield_per=10_000).execute(sa.select(Blob.sha256)):
                rel = Path(name[:2], name[2:4], name)
                if not (out_dir / "blobs" / rel).is_file() and not (store_root / rel).is_file():
                    lost.append(name)
    except sa.exc.SQLAlchemyError as exc:  # PostgreSQL unreachable, say: the operator's to act on, in one line
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise BackupError(f"reading the photos' rows from the database: {first}") from exc
    finally:
        engine.dispose()
    return lost
