import time
import warnings
from contextlib import contextmanager
from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context

from app.config import get_settings
from app.db import make_engine
from app.models import metadata

config = context.config

if config.config_file_name is not None and not config.attributes.get("connection"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _configure(connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=sqlite,  # SQLite alters tables by copy
        compare_type=True,
        # SQLite's DDL is transactional, though Alembic does not assume it: one transaction for the whole
        # run, so that the check below can still undo it
        **({"transactional_ddl": True} if sqlite else {}),
    )
    # A copy ends by dropping the old table, and with foreign keys on (app.db turns them on for every
    # connection) SQLite refuses to drop a table other rows refer to: a premises with inspections, say.
    # Off while the migrations run (SQLite ignores the pragma inside a transaction: set on the driver's
    # connection before the run's begins), every reference checked before the commit, on again after.
    raw = connection.connection.driver_connection if sqlite else None
    if raw is not None:
        if raw.in_transaction:
            raise RuntimeError("migrate SQLite on a connection with no transaction open: its foreign keys, which "
                               "copying a table needs off, cannot be turned off inside one")
        raw.execute("PRAGMA foreign_keys=OFF")
        # the run's transaction takes the write lock as it begins (BEGIN IMMEDIATE, app.db), waiting out the
        # busy timeout for a server's writer: a deferred BEGIN read the version, then failed at once on its
        # first write if another connection was writing ("database is locked"), beside a serving replica too
        connection.execution_options(sqlite_write=True)
    migrating = _MigrationLock(connection) if connection.dialect.name == "postgresql" else None
    try:
        with context.begin_transaction():
            heads = context.get_context().get_current_heads()
            with warnings.catch_warnings():
                # SQLite's batch copies reflect the users table, whose case-insensitive username index (an
                # expression, 0011) SQLAlchemy cannot reflect. No copy of that table comes after it, so the index
                # stands at head (tests/auth/test_login_followups.py hits it on a migrated database), and the
                # warning on a fresh `firegrid migrate` read to an operator as something wrong
                warnings.filterwarnings("ignore", message="Skipped unsupported reflection of expression-based index",
                                        category=sa.exc.SAWarning)
                context.run_migrations()
            if sqlite and context.get_context().get_current_heads() != heads:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"the migration left rows referring to rows that are not there, so it was "
                                       f"undone (table, rowid, referred table, key): {broken[:5]}")
    finally:
        if raw is not None:
            if raw.in_transaction:  # the run's, if it failed before it ended
                connection.rollback()
            raw.execute("PRAGMA foreign_keys=ON")
        if migrating is not None:
            migrating.release()


class _MigrationLock:
    """PostgreSQL: one migration run at a time per schema. Two replicas starting at once (`migrate && serve`)
    both read the same version and ran the same migration: the second failed on what the first had added,
    and its replica never started. The second now waits for the first, then finds nothing left to do. A
    session lock, not a transaction's: a migration that builds an index CONCURRENTLY commits in between.
    Taken only on a connection with no transaction open (a caller's own transaction is the caller's)."""

    KEY = "hashtext(current_schema() || ':firegrid migrations')"

    def __init__(self, connection):
        self.raw = connection.connection.driver_connection
        self.held = self.raw.info.transaction_status == 0  # psycopg's IDLE
        if self.held:
            # Polled, not waited for in one statement: a statement waiting holds a snapshot, and the other
            # run's CREATE INDEX CONCURRENTLY waits for every older snapshot to end: a deadlock.
            with self._autocommit():
                while not self.raw.execute(f"SELECT pg_try_advisory_lock({self.KEY})").fetchone()[0]:
                    time.sleep(0.2)

    @contextmanager
    def _autocommit(self):
        was, self.raw.autocommit = self.raw.autocommit, True
        try:
            yield
        finally:
            self.raw.autocommit = was

    def release(self) -> None:
        if self.held and self.raw.info.transaction_status == 0:
            with self._autocommit():
                self.raw.execute(f"SELECT pg_advisory_unlock({self.KEY})")


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or get_settings().database_url
    engine = make_engine(url)
    with engine.connect() as conn:
        _configure(conn)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `firegrid migrate`")
run()
