"""Operations (a review's findings; each test failed on the code before its fix): the CLI says what is wrong
with the configuration or the database instead of a traceback; migrations run by two servers at once, or
cut short, start both servers and can be run again (PostgreSQL and SQLite); production refuses an obviously
weak secret, and a server whose database or photo store cannot be written refuses to start."""

import os
import subprocess
import time

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from app import migrate
from app.cli import cli
from app.config import get_settings
from tests.conftest import PG_URL, PgSchema, require_pg
from tests.test_migrations import _head
from tests.sync.test_crash import FIREGRID


@pytest.fixture
def env_db(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("FIREGRID_DATABASE_URL", url)
    monkeypatch.delenv("FIREGRID_POLICY_FILE", raising=False)
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


@pytest.fixture
def seeded(env_db):
    runner = CliRunner()
    assert runner.invoke(cli, ["migrate"]).exit_code == 0
    assert runner.invoke(cli, ["seed-demo"]).exit_code == 0
    return env_db


def _no_traceback(result) -> bool:
    return result.exception is None or isinstance(result.exception, SystemExit)


# --- 1. the CLI: bad configuration or input ends in a stack trace, not a message ------------------------

@pytest.mark.parametrize("case", ["missing_policy", "garbled_policy", "bad_revision", "unmigrated_db",
                                  "bad_env_value", "bad_db_url"])
def test_cli_reports_bad_configuration_as_a_message_not_a_traceback(seeded, tmp_path, monkeypatch, case):
    args = ["sweep"]
    if case == "missing_policy":
        monkeypatch.setenv("FIREGRID_POLICY_FILE", str(tmp_path / "nope.toml"))
    elif case == "garbled_policy":
        (tmp_path / "bad.toml").write_text("garbage [[\n", encoding="utf-8")
        monkeypatch.setenv("FIREGRID_POLICY_FILE", str(tmp_path / "bad.toml"))
    elif case == "bad_revision":
        args = ["migrate", "--revision", "bogus"]
    elif case == "unmigrated_db":
        monkeypatch.setenv("FIREGRID_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
        args = ["audit", "verify"]
    elif case == "bad_env_value":
        monkeypatch.setenv("FIREGRID_ENV", "production")
    elif case == "bad_db_url":
        monkeypatch.setenv("FIREGRID_DATABASE_URL", "garbage")
        args = ["audit", "verify"]
    get_settings.cache_clear()
    result = CliRunner().invoke(cli, args)
    assert result.exit_code not in (0,), result.output
    assert _no_traceback(result), f"{case}: {type(result.exception).__name__}: {result.exception}"


# --- 2. migrations on PostgreSQL: interrupted, or run by two servers at once ------------------------------

@pytest.fixture
def pg_schema():
    require_pg()
    schema = PgSchema()
    yield schema
    schema.drop()


def _index_valid(conn, name: str):
    return conn.execute(sa.text(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = :n AND n.nspname = current_schema()"),
        {"n": name}).scalar()


def test_migration_0012_cut_short_by_its_lock_timeout_can_be_run_again(pg_schema, monkeypatch):
    """DEPLOY.md: a migration that cannot get its lock within 10 s "fails without having changed anything
    ... run it again once that transaction ends". 0012 builds its index CONCURRENTLY outside a transaction:
    when a writer's transaction outlasts lock_timeout, the build fails but leaves an INVALID index behind,
    and every later `firegrid migrate` fails with "relation ix_hazards_inspection_id already exists"."""
    import app.db

    migrate.upgrade(pg_schema.url, revision="0011")
    monkeypatch.setattr(app.db, "PG_LOCK_TIMEOUT_MS", 1000)  # the deployed 10 s, shortened for the test
    engine = sa.create_engine(pg_schema.url)
    holder = engine.connect()
    try:
        holder.execute(sa.text("DELETE FROM hazards WHERE false"))  # a long writer's transaction, open
        with pytest.raises(Exception):
            migrate.upgrade(pg_schema.url, revision="0012")
    finally:
        holder.rollback()
        holder.close()
    migrate.upgrade(pg_schema.url)  # the transaction has ended: run it again, as DEPLOY.md says
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == _head()
        assert _index_valid(conn, "ix_hazards_inspection_id") is True
    engine.dispose()


def test_two_servers_migrating_one_postgresql_database_at_once_both_start(pg_schema, tmp_path):
    """The image runs `firegrid migrate && firegrid serve`: two replicas started together both run the
    pending migrations. Nothing serialises them (no advisory lock in migrations/env.py), so both read the
    same version and the second fails (DuplicateColumn) and its server never starts."""
    migrate.upgrade(pg_schema.url, revision="0017")
    url = pg_schema.url + "&application_name=fg_review_migrate"
    env = {**os.environ, "FIREGRID_DATABASE_URL": url}
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    gate_engine = sa.create_engine(pg_schema.url)
    gate = gate_engine.connect()
    procs = []
    try:
        # hold both at their first statement, so that they run the migration truly together
        gate.execute(sa.text("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE"))
        procs = [subprocess.Popen([FIREGRID, "migrate"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT) for _ in range(2)]
        deadline = time.monotonic() + 8  # within the 10 s lock_timeout
        with admin.connect() as watch:
            while time.monotonic() < deadline:
                waiting = watch.execute(sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'fg_review_migrate' "
                    "AND wait_event_type = 'Lock'")).scalar()
                if waiting >= 2:
                    break
                time.sleep(0.05)
        gate.rollback()
        outputs = [p.communicate(timeout=60)[0].decode(errors="replace") for p in procs]
    finally:
        gate.close()
        gate_engine.dispose()
        admin.dispose()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], "\n----\n".join(o[-800:] for o in outputs)


# --- 3. production start-up --------------------------------------------------------------------------------

@pytest.mark.parametrize("secret", [" " * 40, "a" * 40, "dev-insecure-change-me" * 2])
def test_prod_refuses_an_obviously_weak_secret_of_32_characters_or_more(secret):
    """check_production_safety (app/config.py:55) checks only the shipped value and the length: 40 spaces,
    40 times the same letter, or the shipped default typed twice are accepted as the token pepper."""
    from app.config import Settings, UnsafeConfiguration, check_production_safety

    with pytest.raises(UnsafeConfiguration):
        check_production_safety(Settings(env="prod", secret_key=secret), demo_accounts_present=False)


def _start_and_probe(settings):
    """(refused at start, /healthz status) of an app built on these settings."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as c:
            return False, c.get("/healthz").status_code
    except Exception:
        return True, None


def test_a_read_only_database_is_noticed_at_start_or_by_the_health_check(seeded, tmp_path, monkeypatch):
    """A database URL that points to a file the server cannot write (a read-only mount, a file owned by
    another user; here SQLite's mode=ro): the server starts, /healthz says ok, and every write (a login, a
    push) is a 500 internal_error. Refuse to start, or let /healthz fail, so the orchestrator sees it."""
    from app.config import Settings

    path = seeded.removeprefix("sqlite:///")
    monkeypatch.chdir(tmp_path)  # make_engine makes a directory "file:..." in the working directory
    settings = Settings(database_url=f"sqlite:///file:{path}?mode=ro&uri=true", storage_dir=tmp_path / "blobs",
                        secret_key="t" * 40, sweep_interval_seconds=0)
    refused, health = _start_and_probe(settings)
    assert refused or health != 200


def test_an_unusable_storage_dir_is_noticed_at_start_or_by_the_health_check(seeded, tmp_path):
    """FIREGRID_STORAGE_DIR that cannot be written (here: under a regular file; equally a read-only volume or
    one owned by another user): the server starts and reports healthy, and every photo upload fails."""
    from app.config import Settings

    (tmp_path / "a-file").write_text("x")
    settings = Settings(database_url=seeded, storage_dir=tmp_path / "a-file" / "blobs", secret_key="t" * 40,
                        sweep_interval_seconds=0)
    refused, health = _start_and_probe(settings)
    assert refused or health != 200


def test_two_servers_migrating_one_sqlite_file_at_once_both_start(tmp_path):
    """The same on SQLite (two containers on one volume; a deploy's `firegrid migrate` beside a running
    server): a migration's transaction is a deferred BEGIN that reads alembic_version, then writes. With
    another writer busy at that moment (here a held BEGIN IMMEDIATE, 4 s, well within busy_timeout), SQLite
    does not wait for a read transaction's upgrade to a write: `firegrid migrate` fails at once with
    "database is locked" and a traceback (both runs here), instead of waiting its turn as the server's
    writers do (BEGIN IMMEDIATE + the write lock)."""
    import sqlite3

    path = tmp_path / "m.db"
    url = f"sqlite:///{path}"
    migrate.upgrade(url, revision="0017")
    env = {**os.environ, "FIREGRID_DATABASE_URL": url}
    gate = sqlite3.connect(path, isolation_level=None)
    procs = []
    try:
        gate.execute("BEGIN IMMEDIATE")  # another writer, busy: both runs start and wait behind it
        procs = [subprocess.Popen([FIREGRID, "migrate"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT) for _ in range(2)]
        time.sleep(4)  # both have read alembic_version and wait for the write lock (busy_timeout 10 s)
        gate.execute("ROLLBACK")
        outputs = [p.communicate(timeout=60)[0].decode(errors="replace") for p in procs]
    finally:
        gate.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], "\n----\n".join(o[-3000:] for o in outputs)
