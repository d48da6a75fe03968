"""The schema comes only from Alembic: upgrade head gives exactly the models, and downgrade base works."""

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from app import migrate
from app.db import make_engine
from app.models import metadata
from tests.conftest import fresh_database_url


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrade_matches_models_and_downgrade_round_trips(backend, tmp_path):
    url, cleanup = fresh_database_url(backend, tmp_path)
    engine = make_engine(url)
    try:
        migrate.upgrade(url)
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            drift = compare_metadata(ctx, metadata)
            tables = set(sa.inspect(conn).get_table_names())
        assert drift == [], f"models and migrations disagree: {drift}"
        assert set(metadata.tables) <= tables

        migrate.downgrade(url)
        with engine.connect() as conn:
            left = set(sa.inspect(conn).get_table_names()) - {"alembic_version"}
        assert left == set(), f"downgrade base left tables behind: {left}"

        migrate.upgrade(url)  # and back up again from base
        with engine.connect() as conn:
            assert set(metadata.tables) <= set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()
        cleanup()


def test_sqlite_runs_with_wal_foreign_keys_and_busy_timeout(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
    engine.dispose()


def test_sqlite_writers_queue_on_the_write_lock(tmp_path):
    """Two Database objects (as two worker processes would) never hold a write transaction at once;
    the second starts as soon as the first ends."""
    import threading
    import time

    from app.db import Database

    url = f"sqlite:///{tmp_path / 'lock.db'}"
    first, second = Database(make_engine(url)), Database(make_engine(url))
    order: list[str] = []
    s1 = first.session(write=True)
    order.append("first begins")

    def other():
        s2 = second.session(write=True)
        order.append("second begins")
        s2.commit()
        s2.close()

    t = threading.Thread(target=other)
    t.start()
    time.sleep(0.3)  # room for the second writer to (wrongly) get in
    order.append("first commits")
    s1.commit()
    s1.close()
    t.join(10)
    assert order == ["first begins", "first commits", "second begins"]
    # and the lock is free again once both are done
    s3 = first.session(write=True)
    s3.commit()
    s3.close()
    first.engine.dispose()
    second.engine.dispose()
