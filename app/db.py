"""Engine, naming convention, shared column types and the session dependency.

The session dependency commits when the request succeeds and rolls back otherwise: services
never call commit(), so a request or a sync batch succeeds or fails whole.
"""

import fcntl
import functools
import logging
import operator
import os
import sqlite3
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import orjson
import sqlalchemy as sa
from fastapi import Depends, Request
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel

from app.config import Settings

log = logging.getLogger("firegrid.db")

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
    # Index pages of a busy database do not fit SQLite's default 2 MB page cache; a page re-read from
    # the OS on every insert made a 200-hazard batch 1.7x slower (bench/push_bench.py). Allocated as
    # pages are read, so an idle connection costs nothing.
    cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
    # The WAL is copied back into the database by WalCheckpointer, off the write path; this is only
    # the backstop for processes that run none (the CLI) and for a checkpointer that falls behind.
    cur.execute(f"PRAGMA wal_autocheckpoint={WAL_BACKSTOP_PAGES}")
    cur.close()


SQLITE_CACHE_KIB = 16 * 1024  # per pooled connection, and only as pages are read
# SQLite's own checkpoint runs inside every commit once the WAL is this long, under the write lock:
# the serving checkpointer restarts the WAL well before (WAL_RESTART_FRAMES), so only processes
# without one (the CLI) ever reach it.
WAL_BACKSTOP_PAGES = 65536  # 256 MiB of 4 KiB pages
WAL_RESTART_FRAMES = WAL_BACKSTOP_PAGES // 4


class WalCheckpointer:
    """Copies committed WAL frames into the database file in a background thread, and keeps the WAL
    from growing without end.

    With SQLite's automatic checkpoint, the transaction whose commit crosses the threshold does the
    copying (and its fsyncs) while it still holds the write lock, so every other writer waits for it:
    a quarter of a push batch's time went there. A PASSIVE checkpoint on a connection of its own
    takes no write lock and never waits for readers or writers; it copies what it can.

    But the WAL only starts again from its beginning when a writer finds every frame copied and no
    reader still on an older snapshot, and under steady pushes that moment never comes: a 160-batch
    benchmark left a 940 MB WAL beside a 220 MB database, every commit appended to fresh disk
    blocks, and every page read searched a longer WAL index. So once the WAL holds `restart_frames`
    frames, the checkpointer takes the writers' lock (`SQLiteWriteLock`), copies the few frames
    committed since its last pass and waits, for at most `reader_wait_ms`, for readers on older
    snapshots to finish (RESTART): the next writer then reuses the WAL from its start. Writers wait
    meanwhile, which is why it is done by size (every ~10 push batches), not again for a WAL that
    has not grown since the last restart, and not for `backoff_rounds` after a reader outlasted
    the wait.
    """

    def __init__(self, db_path: str, interval: float = 0.25, write_lock: "SQLiteWriteLock | None" = None,
                 restart_frames: int = WAL_RESTART_FRAMES, reader_wait_ms: int = 50, backoff_rounds: int = 1):
        self._path = db_path
        self._interval = interval
        self._write_lock = write_lock
        self._restart_frames = restart_frames
        self._reader_wait_ms = reader_wait_ms
        self._backoff_rounds = backoff_rounds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="firegrid-wal-checkpoint", daemon=True)

    def start(self) -> "WalCheckpointer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def checkpoint(self, conn: sqlite3.Connection) -> tuple[int, int, int]:
        """(busy, frames in the WAL, frames copied), as PRAGMA wal_checkpoint reports them."""
        return tuple(conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())

    def restart(self, conn: sqlite3.Connection) -> tuple[int, int, int]:
        """Copy the rest and let the next writer start the WAL over; holds the writers' lock meanwhile.
        busy is 1 if a reader outlasted the wait (the WAL then restarts on a later round)."""
        if self._write_lock is None:
            return self.checkpoint(conn)
        self._write_lock.acquire()
        try:
            conn.execute(f"PRAGMA busy_timeout={self._reader_wait_ms}")
            try:
                return tuple(conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone())
            finally:
                conn.execute("PRAGMA busy_timeout=0")
        finally:
            self._write_lock.release()

    def round(self, conn: sqlite3.Connection, state: dict[str, int]) -> None:
        """One pass: copy what can be copied; restart the WAL if it is long, has grown since the last
        restart and no reader made the last attempt wait in vain within `backoff_rounds`."""
        _, frames, _ = self.checkpoint(conn)  # the bulk of the copying, off the writers' lock
        if state.get("skip", 0) > 0:
            state["skip"] -= 1
            return
        # after a restart the WAL reports its old length until the next write: nothing new to do
        if frames < self._restart_frames or frames == state.get("restarted_at"):
            return
        busy, frames, _ = self.restart(conn)
        if busy:
            state["skip"] = self._backoff_rounds
        else:
            state["restarted_at"] = frames

    def _run(self) -> None:
        conn = sqlite3.connect(self._path, timeout=0, check_same_thread=False)
        state: dict[str, int] = {}
        try:
            while not self._stop.wait(self._interval):
                try:
                    self.round(conn, state)
                except sqlite3.Error as exc:  # another checkpoint is running: try again next round
                    log.debug("WAL checkpoint skipped: %s", exc)
                except Exception:  # never let the thread die quietly: this process would stop checkpointing
                    log.exception("WAL checkpoint round failed; trying again next round")
        finally:
            conn.close()


def json_dumps(value: Any) -> str:
    """JSON columns' encoder: orjson is ~5x faster than json.dumps on the push path, and what it
    writes reads back the same (UTF-8 text instead of \\u escapes)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def make_engine(url: str, echo: bool = False, **kwargs: Any) -> Engine:
    kwargs = {"json_serializer": json_dumps, "json_deserializer": orjson.loads, **kwargs}
    if url.startswith("sqlite"):
        db_path = sa.engine.make_url(url).database
        if db_path and db_path != ":memory:" and not db_path.startswith("file:"):
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
            try:  # made here, empty, readable by its owner only: it holds password hashes and phone numbers (SQLite
                # gives its -wal and -shm the same mode); an existing file keeps the mode it has
                os.close(os.open(db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                pass
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
    engine = sa.create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=10, **kwargs)
    if engine.dialect.name == "postgresql":
        event.listen(engine, "connect", _pg_lock_timeout)
    return engine


# PostgreSQL: a statement waits at most this long for a lock, then fails (the API answers 503 "busy",
# app/errors.py), as SQLite's busy_timeout does: one stuck transaction, an admin's psql session left
# open, say, would otherwise hang every request that touches the same rows, for ever.
PG_LOCK_TIMEOUT_MS = 10_000


def _pg_lock_timeout(dbapi_conn, _record) -> None:
    autocommit = dbapi_conn.autocommit
    dbapi_conn.autocommit = True  # a SET inside the pool's first transaction would go with its rollback
    try:
        dbapi_conn.execute(f"SET lock_timeout = {PG_LOCK_TIMEOUT_MS}")
    finally:
        dbapi_conn.autocommit = autocommit


# -- bulk inserts ---------------------------------------------------------------------------------


@dataclass
class PreparedInsert:
    """Rows bound for one executemany INSERT, ready before the write transaction begins: on SQLite
    that transaction holds the only write lock, so what can be done before it is done before it."""

    table: sa.Table
    rows: list[dict[str, Any]]  # as given: what the ROWS_INSERTED hooks are told
    sql: str
    params: list[Any]
    notes: dict[str, Any] = field(default_factory=dict)  # what ROWS_PREPARED hooks worked out ahead


# Told about every prepared insert, with (table, rows, notes): the change feed builds the payloads it
# will publish here, outside the write lock, and keeps them in notes.
ROWS_PREPARED: list[Callable[[sa.Table, list[dict[str, Any]], dict[str, Any]], None]] = []
# Told about every insert written, with (session, prepared insert): the change feed takes the rows it
# must publish from here instead of reading them back.
ROWS_INSERTED: list[Callable[[Session, PreparedInsert], None]] = []


def prepare_insert(dialect: sa.engine.Dialect, table: sa.Table, rows: list[dict[str, Any]]) -> PreparedInsert:
    """Bind row dicts that all name the same columns for one executemany INSERT.

    SQLAlchemy's Core executemany builds a parameter dict and runs a type processor per value; for a
    push batch (1,300 rows, 5,000 datetimes) that was a fifth of the request. Here the statement is
    compiled once per (table, columns, dialect), each column's processor is looked up once, and UTC
    datetimes on SQLite are formatted by one C call, to exactly the text SQLAlchemy would store.
    """
    keys = tuple(rows[0]) if rows else ()
    first = rows[0].keys() if rows else None
    if any(r.keys() != first for r in rows):
        raise ValueError(f"insert_rows({table.name}): every row must name the same columns")
    if not rows:
        return PreparedInsert(table, rows, "", [])
    sql, get, convert = _insert_plan(table, keys, dialect)
    params: list = [get(r) for r in rows]
    if convert:
        for i, values in enumerate(params):
            values = list(values)
            for pos, proc in convert:
                values[pos] = proc(values[pos])
            params[i] = tuple(values)
    if isinstance(sql, tuple):  # named paramstyle (psycopg): dicts
        sql, names = sql
        params = [dict(zip(names, values)) for values in params]
    prepared = PreparedInsert(table, rows, sql, params)
    for hook in ROWS_PREPARED:
        hook(table, rows, prepared.notes)
    return prepared


def insert_prepared(session: Session, prepared: PreparedInsert) -> None:
    """Write a prepared insert in the session's transaction."""
    if not prepared.rows:
        return
    session.connection().exec_driver_sql(prepared.sql, prepared.params)
    for hook in ROWS_INSERTED:
        hook(session, prepared)


def insert_rows(session: Session, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """prepare_insert() and insert_prepared() at once."""
    insert_prepared(session, prepare_insert(session.get_bind().dialect, table, rows))


_INSERT_PLANS: "weakref.WeakKeyDictionary[sa.engine.Dialect, dict[tuple, tuple]]" = weakref.WeakKeyDictionary()


def _insert_plan(table: sa.Table, keys: tuple[str, ...], dialect) -> tuple:
    """(sql, row -> values in parameter order, [(position, converter)] for the values that need one)."""
    # per dialect object: its bind processors carry its engine's settings (the JSON serializer)
    plans = _INSERT_PLANS.setdefault(dialect, {})
    plan = plans.get((table, keys))
    if plan is None:
        compiled = sa.insert(table).compile(dialect=dialect, column_keys=list(keys))
        unfilled = sorted({b.key for b in compiled.binds.values()} - set(keys))
        if unfilled:  # columns with a Python-side default: Core fills them in, this path does not
            raise ValueError(f"insert_rows({table.name}): give these columns a value in every row: {', '.join(unfilled)}")
        if compiled.positional:
            order = [compiled.binds[name].key for name in compiled.positiontup]
            sql: Any = compiled.string
        else:
            order = list(keys)
            if any(compiled.binds.get(k) is None or compiled.binds[k].key != k for k in keys):
                raise ValueError(f"insert_rows({table.name}): cannot bind {keys} by name")
            sql = (compiled.string, order)
        procs = [_bind_processor(table.c[k].type, dialect) for k in order]
        get = operator.itemgetter(*order) if len(order) > 1 else (lambda r, k=order[0]: (r[k],))
        plan = plans[(table, keys)] = (sql, get, [(i, p) for i, p in enumerate(procs) if p is not None])
    return plan


def _bind_processor(type_: sa.types.TypeEngine, dialect) -> Callable[[Any], Any] | None:
    if dialect.name == "sqlite":
        if isinstance(type_, UTCDateTime):
            return _sqlite_utc_text
        if isinstance(type_, sa.Boolean):
            return None  # sqlite3 binds True/False as 1/0, which is what the Boolean processor makes of them
    return type_.dialect_impl(dialect).bind_processor(dialect)


def _sqlite_utc_text(value: datetime | None) -> str | None:
    """What UTCDateTime + SQLite's DATETIME store: 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    if value.tzinfo is not timezone.utc:
        # converted before the cache: two local times can be equal yet different instants (fold)
        value = value.astimezone(timezone.utc)
    return _utc_text(value)


@functools.lru_cache(maxsize=4096)
def _utc_text(value: datetime) -> str:
    # a push batch binds ~4,700 times but only a few hundred distinct ones (now, the deadlines)
    return value.isoformat(" ", "microseconds")[:26]


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
        self.sqlite_path = path if path and path != ":memory:" else None
        self.write_lock = SQLiteWriteLock(path) if self.sqlite_path else None

    def check_writable(self) -> None:
        """Start-up: the database takes writes (SQLite: its write lock can be taken; PostgreSQL: the session
        is not read-only, a standby or a read-only role), or an error saying so: a read-only database
        otherwise showed as healthy while every write was a 500."""
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "sqlite":
                # on the driver's connection (no transaction of SQLAlchemy's around it): a write that changes
                # nothing, undone; taking the write lock alone passes on a read-only file
                raw = conn.connection.driver_connection
                try:
                    raw.execute("BEGIN IMMEDIATE")
                    try:
                        version = raw.execute("PRAGMA user_version").fetchone()[0]
                        raw.execute(f"PRAGMA user_version = {int(version)}")
                    finally:
                        raw.execute("ROLLBACK")
                except sqlite3.OperationalError as exc:
                    if "readonly" in str(exc).replace(" ", "").lower():
                        raise RuntimeError(f"FIREGRID_DATABASE_URL: the database cannot be written: {exc}") from exc
                    # busy: another writer holds the lock for now, which is not this check's business
            elif conn.exec_driver_sql("SHOW transaction_read_only").scalar() == "on":
                raise RuntimeError("FIREGRID_DATABASE_URL: the database is read-only (a standby, or a read-only "
                                   "default for this role): point it at the primary")
            conn.rollback()

    def start_checkpointer(self) -> "WalCheckpointer | None":
        """A serving process's background WAL checkpoints (SQLite files only); stop() it on shutdown."""
        return WalCheckpointer(self.sqlite_path, write_lock=self.write_lock).start() if self.sqlite_path else None

    @classmethod
    def from_settings(cls, settings: Settings) -> "Database":
        return cls(make_engine(settings.database_url, echo=settings.sql_echo))

    @contextmanager
    def connect(self, write: bool = False) -> Iterator[sa.Connection]:
        """One short Core transaction, committed on success: for the hot paths that need a statement
        or two and no ORM (a photo upload's checks and its row). ``write`` as for ``session()``."""
        lock = self.write_lock if write and self.engine.dialect.name == "sqlite" else None
        if lock is not None:
            lock.acquire()
        try:
            with self.engine.connect() as conn:
                if write:
                    conn.execution_options(sqlite_write=True)
                with conn.begin():
                    yield conn
        finally:
            if lock is not None:
                lock.release()

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


# scope="function": the session commits when the endpoint returns, before the response is sent, so a
# commit that fails (a lock wait that times out, a deadlock broken) is the error the client gets, never a
# 200 for a change that was rolled back (with the default scope FastAPI commits after sending)
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
