"""Engine, naming convention, shared column types and the session dependency.

The session dependency commits when the request succeeds and rolls back otherwise: services
never call commit(), so a request or a sync batch succeeds or fails whole.
"""

import fcntl
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, Request
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel

from app.config import Settings

SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(sa.TypeDecorator):
    """Aware UTC datetimes on every backend (SQLite drops the offset; we store UTC and re-attach it)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers never block the writer; busy_timeout: a second writer waits instead of failing.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_engine(url: str, echo: bool = False, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        db_path = sa.engine.make_url(url).database
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, echo=echo, connect_args={"check_same_thread": False, "timeout": 10}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; emit BEGIN IMMEDIATE ourselves so a
        # read-then-write transaction takes the write lock up front instead of failing on upgrade.
        @event.listens_for(engine, "connect")
        def _no_autobegin(dbapi_conn, _record):
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("sqlite_write") else "BEGIN")

        return engine
    return sa.create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=10, **kwargs)


class SQLiteWriteLock:
    """One writer at a time across threads and worker processes, queued in the kernel.

    SQLite allows one writer anyway; left to its busy handler, a waiting writer polls with sleeps of
    up to 100 ms and the write lock sits idle in between (measured: batches stalled for seconds under
    two workers). A blocking flock wakes the next writer the moment the last one commits. Processes
    that do not take it (an admin's sqlite3 shell) still meet SQLite's own lock and busy timeout.
    """

    def __init__(self, db_path: str):
        self._thread_lock = threading.Lock()
        self._path = db_path + ".writelock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self._thread_lock.acquire()
        try:
            if self._fd is None:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def release(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()


@event.listens_for(Session, "after_transaction_end")
def _release_write_lock(session: Session, transaction) -> None:
    if transaction.parent is None:
        lock = session.info.pop("sqlite_write_lock", None)
        if lock is not None:
            lock.release()


class Database:
    """Holds the engine for one app instance; tests build their own around a migrated database."""

    def __init__(self, engine: Engine):
        import app.sync.feed  # noqa: F401  registers the change feed's session events (CLI and server alike)

        self.engine = engine
        path = engine.url.database if engine.dialect.name == "sqlite" else None
        self.write_lock = SQLiteWriteLock(path) if path and path != ":memory:" else None

    @classmethod
    def from_settings(cls, settings: Settings) -> "Database":
        return cls(make_engine(settings.database_url, echo=settings.sql_echo))

    def session(self, write: bool = False) -> Session:
        session = Session(self.engine, expire_on_commit=False)
        if write and self.engine.dialect.name == "sqlite":
            if self.write_lock is not None:
                self.write_lock.acquire()  # released when this transaction ends (_release_write_lock)
                session.info["sqlite_write_lock"] = self.write_lock
            try:
                session.connection(execution_options={"sqlite_write": True})
            except BaseException:
                session.close()
                raise
        return session


def get_session(request: Request) -> Iterator[Session]:
    db: Database = request.app.state.db
    # A write request takes SQLite's write lock up front (BEGIN IMMEDIATE), unless its endpoint opens its
    # own short write transaction after reading and planning (sync push), so other writers wait less.
    writes = request.method not in ("GET", "HEAD", "OPTIONS") and not getattr(
        request.scope.get("endpoint"), "opens_own_write_transaction", False)
    with db.session(write=writes) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
    for effect in session.info.get("after_commit", []):
        effect()


def after_commit(session: Session, effect: Callable[[], None]) -> None:
    """Run effect only once the surrounding transaction has committed (never for a rolled-back change)."""
    session.info.setdefault("after_commit", []).append(effect)


SessionDep = Annotated[Session, Depends(get_session)]
