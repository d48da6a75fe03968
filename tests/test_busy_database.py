"""A request the database turns away for now (a lock held too long elsewhere, a deadlock broken) is a
503 "busy" with Retry-After, not a 500: nothing was changed, and the same request sent again applies
(once). Both databases wait 10 s for a lock before giving up (app/db.py)."""

import sqlite3
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from app.db import PG_LOCK_TIMEOUT_MS, make_engine
from app.errors import busy_reason
from tests.conftest import login
from tests.helpers import hazard_data, op, place_of

NOW = datetime.now(timezone.utc)


def test_a_push_blocked_by_a_stuck_transaction_is_a_503_and_its_retry_applies_once(client, db, session, units,
                                                                                  migrated_engine):
    if migrated_engine.dialect.name != "postgresql":
        pytest.skip("SQLite's writers queue on one lock; the test's own transaction holds it (see below for SQLite)")
    place = place_of(session, units, "grid-a-1-1", "rental")
    worker = login(client, "worker-a1")
    body = {"ops": [op("hazard.report", hazard_data(place.id, NOW - timedelta(minutes=1), photos=[]))]}
    db.connection.execute(sa.text("SET LOCAL lock_timeout = '200ms'"))  # not the 10 s of production
    with migrated_engine.connect() as stuck:  # an admin's psql session, say, left holding the premises
        stuck.execute(sa.text("SELECT id FROM places WHERE id = :id FOR UPDATE"), {"id": place.id})
        r = client.post("/api/v1/sync/push", json=body, headers=worker)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        error = r.json()["error"]
        assert error["code"] == "busy" and "lock wait" in error["message"], error
        assert session.execute(sa.text("SELECT count(*) FROM hazards WHERE place_id = :p"), {"p": place.id}).scalar() == 0
        stuck.rollback()
    first = client.post("/api/v1/sync/push", json=body, headers=worker)
    again = client.post("/api/v1/sync/push", json=body, headers=worker)
    assert [first.json()["results"][0]["status"], again.json()["results"][0]["status"]] == ["applied", "duplicate"]
    assert session.execute(sa.text("SELECT count(*) FROM hazards WHERE place_id = :p"), {"p": place.id}).scalar() == 1


def test_postgresql_connections_wait_for_a_lock_only_so_long(migrated_engine):
    if migrated_engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only; SQLite's busy_timeout is set with the other pragmas")
    engine = make_engine(migrated_engine.url.render_as_string(hide_password=False))
    try:
        with engine.connect() as conn:
            conn.rollback()  # the setting must outlive the pool's first transaction
            assert conn.execute(sa.text("SHOW lock_timeout")).scalar() == f"{PG_LOCK_TIMEOUT_MS // 1000}s"
    finally:
        engine.dispose()


def test_sqlites_busy_error_is_told_apart_from_other_database_errors(tmp_path):
    path = tmp_path / "busy.db"
    holder, waiter = sqlite3.connect(path, isolation_level=None), sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError) as busy:
            waiter.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError) as other:
            waiter.execute("SELECT * FROM no_such_table")
    finally:
        holder.close()
        waiter.close()
    assert busy_reason(sa.exc.OperationalError("BEGIN IMMEDIATE", None, busy.value)) is not None
    assert busy_reason(sa.exc.OperationalError("SELECT", None, other.value)) is None
    assert busy_reason(ValueError("not a database error")) is None



def test_a_full_lock_table_is_busy_not_a_failure():
    """PostgreSQL's shared lock table holds max_locks_per_transaction x max_connections locks; pushes at
    once each hold up to two advisory locks per op (docs/DEPLOY.md). When it is full the statement fails
    with "out of shared memory" (SQLSTATE 53200) and the transaction is rolled back whole: the phone is told
    to send it again. (Filling the real table would fail every other session of the cluster meanwhile, a
    test run beside this one included: psycopg's class for that SQLSTATE stands in for it.)"""
    psycopg = pytest.importorskip("psycopg")
    full = psycopg.errors.OutOfMemory("out of shared memory")
    assert full.sqlstate == "53200"
    assert busy_reason(sa.exc.OperationalError("SELECT pg_advisory_xact_lock", None, full)) is not None
    assert busy_reason(sa.exc.OperationalError("SELECT", None, psycopg.errors.UndefinedTable("no"))) is None
