"""An index added to a big table on PostgreSQL is built CONCURRENTLY: a plain CREATE INDEX on a county's
hazards table queues for a lock that every push and desk action then queues behind, for as long as the
index takes to build. Migration 0012 (hazards by inspection) must let writers on while it waits."""

import threading
import time

import pytest
import sqlalchemy as sa

from app import migrate
from tests.conftest import PgSchema, require_pg


@pytest.fixture
def schema_at_0011():
    require_pg()
    schema = PgSchema()
    migrate.upgrade(schema.url, revision="0011")
    yield schema
    schema.drop()


def _wait_until(predicate, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_writers_go_on_while_the_inspection_index_is_built(schema_at_0011):
    engine = sa.create_engine(schema_at_0011.url)
    holder, other = engine.connect(), engine.connect()
    # the watcher in autocommit: a transaction of its own left open would be one more the build waits for
    watcher = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    migrating = threading.Thread(target=migrate.upgrade, args=(schema_at_0011.url,), kwargs={"revision": "0012"})
    try:
        holder.execute(sa.text("DELETE FROM hazards WHERE false"))  # a writer's transaction, still open
        migrating.start()
        # the index build is waiting for the open writer
        assert _wait_until(lambda: watcher.execute(sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' "
            "AND query ILIKE 'CREATE INDEX%ix_hazards_inspection_id%'")).scalar() > 0), "the build never waited"
        # another writer is not held behind it (a plain CREATE INDEX would hold it: its lock waits in line)
        other.execute(sa.text("SET LOCAL lock_timeout = '2s'"))
        other.execute(sa.text("DELETE FROM hazards WHERE false"))
        other.commit()
    finally:
        holder.rollback()  # the build goes on either way, and the thread ends
        if migrating.ident is not None:
            migrating.join(60)
        other.close()
        holder.close()
    assert not migrating.is_alive()
    assert watcher.execute(sa.text(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relname = 'ix_hazards_inspection_id' AND n.nspname = current_schema()")).scalar() is True
    watcher.close()
    engine.dispose()
