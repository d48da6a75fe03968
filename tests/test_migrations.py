"""The schema comes only from Alembic: upgrade head gives exactly the models, and downgrade base works."""

import shutil
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlmodel import Session

from app import migrate
from app.db import make_engine
from app.demo import seed_demo
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


def _upgrade_and_seed(url: str, engine: sa.Engine) -> None:
    """Head, and the demo's data: premises that inspections and hazards name."""
    migrate.upgrade(url)
    with Session(engine) as s:
        seed_demo(s)
        s.commit()


@contextmanager
def seeded_database(backend: str, tmp_path: Path) -> Iterator[tuple[str, sa.Engine]]:
    """A fresh database of the backend at head with the demo's data: (url, engine), disposed of after. For a
    data migration's test: change rows, go down past it, come up again, look at what it made of them."""
    url, cleanup = fresh_database_url(backend, tmp_path)
    engine = make_engine(url)
    try:
        _upgrade_and_seed(url, engine)
        yield url, engine
    finally:
        engine.dispose()
        cleanup()


# tables whose rows refer to premises and to one another: a migration that copies one of them must keep them all
_KEPT = ("org_units", "users", "places", "inspections", "hazards", "referrals", "hazard_events", "changes")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrations_down_and_up_again_keep_a_database_with_data(backend, tmp_path):
    """SQLite alters a table by copying it and dropping the old one, which foreign keys refuse while other
    rows refer to it (a premises with inspections): the round trip above, on empty tables, never saw that.
    The demo's data, down past the last migrations that copy tables and up again: every row still there."""
    url, cleanup = fresh_database_url(backend, tmp_path)
    engine = make_engine(url)
    try:
        _upgrade_and_seed(url, engine)

        def counts() -> dict[str, int]:
            with engine.connect() as conn:
                return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar() for t in _KEPT}

        before = counts()
        assert min(before[t] for t in ("places", "hazards", "referrals", "hazard_events")) > 0, before
        migrate.downgrade(url, revision="0013")
        migrate.upgrade(url)
        assert counts() == before
        with engine.connect() as conn:
            if backend == "sqlite":  # and the references are whole, and enforced again on this connection
                assert conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall() == []
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()
        cleanup()


def _sqlite_url(tmp_path: Path) -> str:
    url, _ = fresh_database_url("sqlite", tmp_path)
    return url


def test_migrating_on_a_given_connection_leaves_its_foreign_keys_on(tmp_path):
    """migrate.upgrade(connection=...) (app/migrate.py): the foreign keys env.py turns off on the caller's
    connection while the migrations run are on again after, on it and on the pooled connection under it
    (once, a check after the run left a transaction open and they stayed off)."""
    engine = make_engine(_sqlite_url(tmp_path))
    try:
        with engine.connect() as conn:
            migrate.upgrade(connection=conn)
            conn.commit()
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1, "left off on the caller's connection"
        with engine.connect() as conn:  # the same pooled connection
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1, "left off on the pooled connection"
    finally:
        engine.dispose()


def _head() -> str:
    return ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()


def _scripts_with(tmp_path: Path, body: str) -> Path:
    """The project's migrations and one more after head (revision 'zz01')."""
    scripts = tmp_path / "scripts"
    shutil.copytree(migrate.ROOT / "migrations", scripts)
    (scripts / "versions" / "zz01_extra.py").write_text(textwrap.dedent(f'''
        from alembic import op
        revision = "zz01"
        down_revision = "{_head()}"
        branch_labels = None
        depends_on = None

        def upgrade() -> None:
            {body}

        def downgrade() -> None:
            pass
    '''))
    return scripts


def test_a_migration_leaving_dangling_references_is_rolled_back_not_committed(tmp_path):
    """Every reference is checked before the run commits, and the run is one transaction (Alembic commits
    each SQLite migration on its own unless told otherwise): a migration that leaves hazards naming premises
    that are gone is undone, version and all."""
    url = _sqlite_url(tmp_path)
    engine = make_engine(url)
    try:
        _upgrade_and_seed(url, engine)
        with engine.connect() as conn:
            before = conn.exec_driver_sql("SELECT count(*) FROM places").scalar()
        cfg = migrate.alembic_config(url)
        cfg.set_main_option("script_location", str(_scripts_with(
            tmp_path, 'op.execute("DELETE FROM places WHERE id IN (SELECT place_id FROM hazards)")')))
        with pytest.raises(RuntimeError, match="referring to rows"):
            command.upgrade(cfg, "head")
        with engine.connect() as conn:
            version = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
            after = conn.exec_driver_sql("SELECT count(*) FROM places").scalar()
        assert (version, after) == (_head(), before), "the failed check left the migration committed"
    finally:
        engine.dispose()


def test_migrating_on_a_connection_already_in_a_transaction_is_refused_with_a_reason(tmp_path):
    """SQLite ignores the foreign-keys pragma inside a transaction, so on such a connection a table copy would
    fail on the first premises with an inspection: refused up front, nothing changed."""
    url = _sqlite_url(tmp_path)
    engine = make_engine(url)
    try:
        _upgrade_and_seed(url, engine)
        migrate.downgrade(url, revision="0015")
        with pytest.raises(RuntimeError, match="no transaction open"):
            with engine.begin() as conn:
                migrate.upgrade(connection=conn)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0015"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        migrate.upgrade(url)  # and by the URL, as `firegrid migrate` does, it goes through
    finally:
        engine.dispose()


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
