"""app.db: insert_rows() stores exactly what SQLAlchemy would, and the WAL is checkpointed off the write path."""

import sqlite3
import threading
from contextlib import closing
import time
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import Session

from app import migrate
from app.config import Settings
from app.db import Database, WalCheckpointer, insert_rows, make_engine
from app.main import create_app
from app.sync.feed import Change
from tests.helpers import uid

CN = timezone(timedelta(hours=8))


def change_row(entity_id: str) -> dict:
    return {"entity_type": "place", "entity_id": entity_id, "grid_id": None, "town_id": "t", "holder_unit_id": None,
            "deleted": True, "origin_device_id": None,
            "changed_at": datetime(2026, 3, 2, 9, 30, 1, 123, tzinfo=CN),  # not UTC, with microseconds
            "data": {"reason": "楼道堆放杂物", "n": 1.5, "nested": [1, None, {"k": True}]}}


def stored(session: Session, entity_id: str) -> tuple:
    # the raw column values as the database holds them, no result processing
    return session.connection().exec_driver_sql(
        "SELECT entity_type, grid_id, town_id, deleted, changed_at, data FROM changes WHERE entity_id = "
        + ("?" if session.get_bind().dialect.name == "sqlite" else "%s"), (entity_id,)).one()


def test_insert_rows_stores_what_the_orm_stores(session):
    by_orm, by_rows = uid(), uid()
    session.add(Change(**change_row(by_orm)))
    session.flush()
    insert_rows(session, Change.__table__, [change_row(by_rows)])
    assert stored(session, by_rows) == stored(session, by_orm)
    got = session.get(Change, session.exec(sa.select(Change.seq).where(Change.entity_id == by_rows)).one()[0])
    assert got.changed_at == datetime(2026, 3, 2, 1, 30, 1, 123, tzinfo=timezone.utc)
    assert got.data == change_row(by_rows)["data"]


def test_insert_rows_refuses_rows_that_differ_or_naive_times(session):
    a, b = change_row(uid()), change_row(uid())
    del b["grid_id"]
    with pytest.raises(ValueError, match="same columns"):
        insert_rows(session, Change.__table__, [a, b])
    naive = change_row(uid()) | {"changed_at": datetime(2026, 3, 2, 9, 0)}
    with pytest.raises(ValueError, match="naive"):
        insert_rows(session, Change.__table__, [naive])


def test_sqlite_connections_get_a_bigger_page_cache_and_a_backstop_checkpoint(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA cache_size").scalar() <= -16 * 1024  # negative: KiB
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() > 1000  # SQLite's default
    engine.dispose()


def write_some(url: str, n: int = 200) -> None:
    db = Database(make_engine(url))
    with db.session(write=True) as s:
        insert_rows(s, Change.__table__, [change_row(uid()) for _ in range(n)])
        s.commit()
    db.engine.dispose()


def test_the_checkpointer_copies_committed_frames_into_the_database(tmp_path):
    path = tmp_path / "ck.db"
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    keep = sqlite3.connect(path)  # while another connection has the WAL open, closing one does not checkpoint it
    keep.execute("SELECT count(*) FROM sqlite_master").fetchone()  # now it has the WAL open
    write_some(url)
    size_before = path.stat().st_size
    ck = WalCheckpointer(str(path))
    with sqlite3.connect(path) as conn:
        busy, frames, copied = ck.checkpoint(conn)
    assert busy == 0 and frames > 0 and copied == frames
    assert path.stat().st_size > size_before  # the rows are in the database file now, not only the WAL
    keep.close()


def _wal_setup(tmp_path):
    path = tmp_path / "restart.db"
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    db = Database(make_engine(url))
    keep = sqlite3.connect(path)  # keeps the WAL file open between the test's connections
    keep.execute("SELECT count(*) FROM sqlite_master").fetchone()
    return path, url, db, keep


def test_the_restart_lets_the_next_writer_reuse_the_wal_from_its_start(tmp_path):
    """A reader on an older snapshot keeps writers appending to the WAL even when every frame has
    been copied; restart() waits for such readers (holding writers back) and the next commit then
    writes from the WAL's beginning: the file stops growing."""
    path, url, db, keep = _wal_setup(tmp_path)
    wal = path.with_name(path.name + "-wal")
    ck = WalCheckpointer(str(path), write_lock=db.write_lock, reader_wait_ms=5000)
    write_some(url)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM changes").fetchone()  # a snapshot that reads from the WAL
    with closing(sqlite3.connect(path, timeout=0, check_same_thread=False)) as conn:
        assert ck.checkpoint(conn)[0] == 0  # every frame copied...
        before = wal.stat().st_size
        write_some(url)
        assert wal.stat().st_size > before  # ...yet the writer appended: the reader still holds its place

        done = []
        t = threading.Thread(target=lambda: done.append(ck.restart(conn)))
        t.start()
        time.sleep(0.2)  # the restart waits for the reader (not a timing assertion: any wait works)
        reader.execute("COMMIT")
        reader.close()
        t.join()
    assert done[0][0] == 0 and done[0][1] == done[0][2]
    grown = wal.stat().st_size
    write_some(url)
    assert wal.stat().st_size == grown  # written over the WAL's beginning, not appended
    db.engine.dispose()
    keep.close()


def test_a_restart_waits_for_a_slow_reader_only_so_long_and_holds_writers_meanwhile(tmp_path):
    path, url, db, keep = _wal_setup(tmp_path)
    write_some(url)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM changes").fetchone()
    write_some(url)  # the reader is now on an older snapshot than the WAL's last frame
    ck = WalCheckpointer(str(path), write_lock=db.write_lock, reader_wait_ms=300)
    held, result = [], []

    def restart():
        with closing(sqlite3.connect(path, timeout=0)) as conn:
            result.append(ck.restart(conn))

    t = threading.Thread(target=restart)
    t.start()
    deadline = time.monotonic() + 5
    while not db.write_lock._thread_lock.locked() and time.monotonic() < deadline:
        time.sleep(0.005)
    held.append(db.write_lock._thread_lock.locked())  # writers of this process wait while it runs
    t.join()
    assert held == [True]
    assert result[0][0] == 1  # busy: the reader outlasted the wait; the WAL restarts on a later round
    assert not db.write_lock._thread_lock.locked()
    with db.session(write=True) as s:  # and writers go on
        insert_rows(s, Change.__table__, [change_row(uid())])
        s.commit()
    reader.execute("COMMIT")
    reader.close()
    db.engine.dispose()
    keep.close()


def test_the_checkpointer_restarts_a_long_wal_once_and_backs_off_after_a_busy_attempt(tmp_path):
    """Writers wait while a restart runs, so it is tried only when the WAL is long, not again for a
    WAL that has not been written since, and not for a few rounds after a reader outlasted it."""
    path, url, db, keep = _wal_setup(tmp_path)
    write_some(url)
    ck = WalCheckpointer(str(path), write_lock=db.write_lock, restart_frames=1, backoff_rounds=2)
    calls, answers = [], []
    real = ck.restart

    def counting_restart(conn):
        calls.append(1)
        return answers.pop(0) if answers else real(conn)

    ck.restart = counting_restart
    state: dict = {}
    with closing(sqlite3.connect(path, timeout=0)) as conn:
        ck.round(conn, state)
        assert len(calls) == 1 and state["restarted_at"] > 0
        ck.round(conn, state)  # nothing written since: the WAL still reports its old length
        assert len(calls) == 1
        write_some(url)
        answers.append((1, 10**6, 0))  # a reader outlasted the wait
        ck.round(conn, state)
        assert len(calls) == 2
        ck.round(conn, state)
        ck.round(conn, state)
        assert len(calls) == 2  # backing off
        ck.round(conn, state)
        assert len(calls) == 3
        big = WalCheckpointer(str(path), write_lock=db.write_lock)  # the default: only a long WAL
        big.restart = counting_restart
        write_some(url)
        big.round(conn, {})
        assert len(calls) == 3
    db.engine.dispose()
    keep.close()


def test_a_failed_restart_still_lets_the_writers_go(tmp_path):
    path, url, db, keep = _wal_setup(tmp_path)

    class Broken:
        def execute(self, sql):
            raise sqlite3.OperationalError("disk I/O error")

    ck = WalCheckpointer(str(path), write_lock=db.write_lock)
    with pytest.raises(sqlite3.OperationalError):
        ck.restart(Broken())
    assert not db.write_lock._thread_lock.locked()
    db.engine.dispose()
    keep.close()


def test_a_served_sqlite_app_runs_the_checkpointer_and_stops_it(tmp_path):
    path = tmp_path / "served.db"
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    settings = Settings(database_url=url, storage_dir=tmp_path / "blobs", secret_key="t" * 40, env="dev",
                        sweep_interval_seconds=0)
    keep = sqlite3.connect(path)
    keep.execute("SELECT count(*) FROM sqlite_master").fetchone()  # now it has the WAL open
    write_some(url)
    size_before = path.stat().st_size

    def checkpointers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "firegrid-wal-checkpoint"}

    others = checkpointers()  # other apps of this test session (the PWA tests' server) have their own
    with TestClient(create_app(settings)):
        ours = checkpointers() - others
        assert len(ours) == 1
        deadline = time.monotonic() + 20
        while path.stat().st_size == size_before and time.monotonic() < deadline:
            time.sleep(0.05)  # waiting for the background round, not timing it
        assert path.stat().st_size > size_before
    assert not ours.pop().is_alive()
    keep.close()


def test_utc_text_tells_apart_equal_local_times_that_are_different_instants():
    """01:30 on the night New York's clocks go back happens twice; the two compare equal in Python."""
    from zoneinfo import ZoneInfo

    from sqlalchemy.dialects import sqlite

    from app.db import UTCDateTime, _sqlite_utc_text

    ny = ZoneInfo("America/New_York")
    first, second = (datetime(2025, 11, 2, 1, 30, tzinfo=ny, fold=f) for f in (0, 1))
    reference = UTCDateTime().dialect_impl(sqlite.dialect()).bind_processor(sqlite.dialect())
    assert [_sqlite_utc_text(first), _sqlite_utc_text(second)] == [reference(first), reference(second)]
    assert _sqlite_utc_text(first) != _sqlite_utc_text(second)


def test_insert_rows_names_the_columns_core_would_have_defaulted(session):
    row = change_row(uid())
    del row["deleted"], row["changed_at"]  # both have Python-side defaults
    with pytest.raises(ValueError, match="changed_at, deleted"):
        insert_rows(session, Change.__table__, [row])


def test_connect_commits_on_success_rolls_back_on_error_and_holds_the_write_lock_only_inside(tmp_path):
    url = f"sqlite:///{tmp_path / 'connect.db'}"
    migrate.upgrade(url)
    db = Database(make_engine(url))
    with db.connect(write=True) as conn:
        assert db.write_lock._thread_lock.locked()  # BEGIN IMMEDIATE under the writers' lock
        conn.execute(sa.text("INSERT INTO workday_overrides (day, is_workday, note) VALUES ('2031-01-02', 0, 'x')"))
    assert not db.write_lock._thread_lock.locked()
    with pytest.raises(RuntimeError):
        with db.connect(write=True) as conn:
            conn.execute(sa.text("INSERT INTO workday_overrides (day, is_workday, note) VALUES ('2031-01-03', 0, 'y')"))
            raise RuntimeError("the request failed")
    assert not db.write_lock._thread_lock.locked()
    with db.connect() as conn:
        assert not db.write_lock._thread_lock.locked()  # a read takes no write lock
        days = conn.execute(sa.text("SELECT day FROM workday_overrides WHERE day >= '2031-01-01'")).scalars().all()
    assert [str(d) for d in days] == ["2031-01-02"]
    db.engine.dispose()


def test_a_new_sqlite_database_is_its_owners_only(tmp_path):
    """It holds password hashes and owners' phone numbers: made 0600 (the umask's 0644 before), and SQLite gives
    its WAL the same mode; a file that exists keeps its own (an operator's choice)."""
    import stat

    url = f"sqlite:///{tmp_path / 'new.db'}"
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        conn.exec_driver_sql("CREATE TABLE t (x)")
    for f in (tmp_path / "new.db", tmp_path / "new.db-wal"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    engine.dispose()
    kept = tmp_path / "kept.db"
    kept.touch(mode=0o640)
    kept.chmod(0o640)
    make_engine(f"sqlite:///{kept}").dispose()
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640
