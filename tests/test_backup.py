"""`firegrid backup`: the SQLite database copied as one snapshot while it is written, then the photos, each
checked against its name; the copy restores (migrate and audit verify on it)."""

import dataclasses
import hashlib
import io
import json
import sqlite3
import threading
from datetime import datetime, timezone

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from app import migrate
from app.backup import backup, exclusive
from app.cli import cli
from app.config import Settings, get_settings
from app.db import Database, make_engine
from app.demo import seed_demo
from app.main import create_app
from app.photos.storage import FilesystemBlobStore
from app.sync.feed import RESEND_MARGIN
from app.sync.pull import Cursor
from tests.conftest import fresh_database_url, login
from tests.helpers import hazard_data, op, push
from tests.test_cli import env_db  # noqa: F401 (fixture)


@pytest.fixture
def site(env_db, tmp_path, monkeypatch):  # noqa: F811
    """A migrated, seeded SQLite file and a photo store with three photos; yields (db file, store root, names)."""
    store_root = tmp_path / "blobs"
    monkeypatch.setenv("FIREGRID_STORAGE_DIR", str(store_root))
    get_settings.cache_clear()
    runner = CliRunner()
    assert runner.invoke(cli, ["migrate"]).exit_code == 0
    assert runner.invoke(cli, ["seed-demo"]).exit_code == 0
    store = FilesystemBlobStore(store_root)
    names = [put_photo(store, colour) for colour in ("red", "green", "blue")]
    yield tmp_path / "cli.db", store_root, names
    get_settings.cache_clear()


def put_photo(store: FilesystemBlobStore, colour: str) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buf, "JPEG")
    data = buf.getvalue()
    name = hashlib.sha256(data).hexdigest()
    store.put_stream(name, [data], 1 << 20)
    return name


def backed_up(out, name: str):
    return out / "blobs" / name[:2] / name[2:4] / name


def run_backup(out, *extra):
    return CliRunner().invoke(cli, ["backup", "--out", str(out), *extra])


def test_backup_copies_the_database_and_photos_and_restores(site, tmp_path, monkeypatch):
    db_file, store_root, names = site
    out = tmp_path / "backup"
    first = run_backup(out)
    assert first.exit_code == 0, first.output
    assert "photos: 3 copied, 0 already there, 0 damaged, 0 lost" in first.output
    copies = list(out.glob("firegrid-*.db"))
    assert len(copies) == 1 and copies[0].stat().st_mode & 0o077 == 0  # not readable by others
    for name in names:
        assert backed_up(out, name).read_bytes() == (store_root / name[:2] / name[2:4] / name).read_bytes()
    conn = sqlite3.connect(copies[0])
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one file, whole by itself
    live = sqlite3.connect(db_file)
    for table in ("hazards", "hazard_events", "places", "users"):
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == live.execute(
            f"SELECT count(*) FROM {table}").fetchone()
    conn.close()
    live.close()

    # restored: the server's commands run on the copy as on the original
    monkeypatch.setenv("FIREGRID_DATABASE_URL", f"sqlite:///{copies[0]}")
    get_settings.cache_clear()
    assert CliRunner().invoke(cli, ["migrate"]).exit_code == 0
    verified = CliRunner().invoke(cli, ["audit", "verify"])
    assert verified.exit_code == 0 and ": OK" in verified.output, verified.output


def test_a_second_run_copies_only_new_photos_and_redoes_a_cut_copy(site, tmp_path):
    _, store_root, names = site
    out = tmp_path / "backup"
    assert run_backup(out).exit_code == 0
    backed_up(out, names[0]).write_bytes(b"cut sho")  # an earlier copy damaged or cut short
    new = put_photo(FilesystemBlobStore(store_root), "white")
    again = run_backup(out)
    assert again.exit_code == 0, again.output
    assert "photos: 2 copied, 2 already there, 0 damaged, 0 lost" in again.output
    assert hashlib.sha256(backed_up(out, names[0]).read_bytes()).hexdigest() == names[0]
    assert backed_up(out, new).is_file()
    assert len(list(out.glob("firegrid-*.db"))) == 2  # never overwritten, even within the same second


def test_a_damaged_photo_is_named_and_not_copied(site, tmp_path):
    _, store_root, names = site
    stored = store_root / names[1][:2] / names[1][2:4] / names[1]
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # bit rot on the photo volume
    stored.write_bytes(bytes(data))
    out = tmp_path / "backup"
    result = run_backup(out)
    assert result.exit_code == 1
    assert f"photo {names[1]}: its bytes no longer hash to its name" in result.output
    assert "photos: 2 copied, 0 already there, 1 damaged, 0 lost" in result.output
    assert not backed_up(out, names[1]).exists() and backed_up(out, names[0]).is_file()
    assert list(out.glob("firegrid-*.db"))  # the database is copied all the same
    assert not list((out / "blobs" / "tmp").iterdir())


def test_the_copy_is_one_snapshot_while_the_database_is_written(site, tmp_path):
    """A writer commits pairs of rows all along: the copy holds every pair committed before the backup started,
    and only whole pairs (one transaction's rows, never half of one)."""
    db_file, _, _ = site
    setup = sqlite3.connect(db_file)
    setup.execute("CREATE TABLE backup_probe (n INTEGER, half TEXT)")
    setup.commit()
    setup.close()
    stop = threading.Event()
    committed = [0]

    def write():
        conn = sqlite3.connect(db_file, timeout=10)
        n = 0
        while not stop.is_set():
            n += 1
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO backup_probe VALUES (?, 'a')", (n,))
            conn.execute("INSERT INTO backup_probe VALUES (?, 'b')", (n,))
            conn.execute("COMMIT")
            committed[0] = n
        conn.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        while committed[0] < 50:
            stop.wait(0.01)
        before = committed[0]
        result = run_backup(tmp_path / "backup", "--no-photos")
    finally:
        stop.set()
        writer.join()
    assert result.exit_code == 0, result.output
    copy = sqlite3.connect(next((tmp_path / "backup").glob("firegrid-*.db")))
    rows = copy.execute("SELECT n, count(*) FROM backup_probe GROUP BY n ORDER BY n").fetchall()
    assert len(rows) >= before
    assert [n for n, _ in rows] == list(range(1, len(rows) + 1))
    assert all(count == 2 for _, count in rows)
    assert copy.execute("PRAGMA quick_check").fetchone()[0] == "ok"


def test_postgresql_database_is_left_to_pg_dump_and_the_photos_copied(site, tmp_path, monkeypatch):
    """Skips without PostgreSQL: the photos' rows are read from it (a photo its rows name and no store has)."""
    _, _, names = site
    url, cleanup = fresh_database_url("postgresql", tmp_path)
    try:
        migrate.upgrade(url)
        monkeypatch.setenv("FIREGRID_DATABASE_URL", url)
        get_settings.cache_clear()
        out = tmp_path / "backup"
        result = run_backup(out)
        assert result.exit_code == 0, result.output
        assert "not SQLite, not copied: back it up with pg_dump" in result.output
        assert not list(out.glob("firegrid-*.db")) and all(backed_up(out, n).is_file() for n in names)
    finally:
        cleanup()


def test_operator_errors_are_one_line_and_exit_2(site, tmp_path, monkeypatch):
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("")
    bad = run_backup(a_file / "backup")
    assert bad.exit_code == 2 and bad.output.startswith("error: ")
    bad = run_backup(a_file)
    assert bad.exit_code == 2 and f"--out {a_file}: not a directory" in bad.output, bad.output

    url = get_settings().database_url
    monkeypatch.setenv("FIREGRID_DATABASE_URL", f"sqlite:///{tmp_path / 'no-such.db'}")
    get_settings.cache_clear()
    refused = run_backup(tmp_path / "never-made")
    assert refused.exit_code == 2 and "does not exist" in refused.output
    assert not (tmp_path / "never-made").exists()  # a refused run leaves nothing behind
    monkeypatch.setenv("FIREGRID_DATABASE_URL", url)
    get_settings.cache_clear()

    out = tmp_path / "backup"
    out.mkdir()
    with exclusive(out):  # a cron run still going
        busy = run_backup(out)
    assert busy.exit_code == 2 and "another `firegrid backup`" in busy.output
    assert not list(out.glob("firegrid-*.db"))


def test_a_restored_backup_tells_phones_to_send_again_what_it_lost(tmp_path):
    """Restored from a backup, the server refuses the cursors of before (its change seqs are handed out again)
    and tells a phone whose cursor is of the copied database that it was restored; the phone sends again what
    it sent: what the copy holds answers duplicate, what it lost is applied."""
    live = tmp_path / "live.db"
    url = f"sqlite:///{live}"
    migrate.upgrade(url)
    settings = Settings(database_url=url, storage_dir=tmp_path / "blobs", secret_key="t" * 40,
                        sweep_interval_seconds=0)

    def serving():
        db = Database(make_engine(url))
        return db, TestClient(create_app(settings, db))

    db, c = serving()
    with db.session(write=True) as s:
        seed_demo(s, with_hazards=False)
        s.commit()
    found = datetime.now(timezone.utc)
    with c:
        worker = login(c, "worker-a1", device="phone-1")
        place = c.get("/api/v1/places", headers=worker).json()["items"][0]["id"]
        kept = op("hazard.report", hazard_data(place, found))
        assert push(c, worker, kept)[0]["status"] == "applied"
        copy = backup(url, tmp_path / "blobs", tmp_path / "backup", datetime.now(timezone.utc), photos=False).database
        lost = op("hazard.report", hazard_data(place, found))
        assert push(c, worker, lost)[0]["status"] == "applied"
        cursor = c.get("/api/v1/sync/pull", headers=worker).json()["cursor"]  # a whole pull: both hazards
    db.engine.dispose()

    for f in (live, live.with_name("live.db-wal"), live.with_name("live.db-shm")):  # the disk is lost
        f.unlink(missing_ok=True)
    copy.replace(live)  # DEPLOY.md: the copy where FIREGRID_DATABASE_URL points
    migrate.upgrade(url)
    db, c = serving()
    with c:
        worker = login(c, "worker-a1", device="phone-1")
        refused = c.get("/api/v1/sync/pull", params={"cursor": cursor}, headers=worker)
        assert refused.status_code == 410, refused.text
        err = refused.json()["error"]
        assert err["reason"] == "restored" and datetime.fromisoformat(err["backup_taken_at"]) <= datetime.now(timezone.utc)
        # a push answered a little before the backup began may have committed after its snapshot
        assert datetime.fromisoformat(err["resend_since"]) == datetime.fromisoformat(err["backup_taken_at"]) - RESEND_MARGIN
        again = push(c, worker, kept, lost)
        assert [r["status"] for r in again] == ["duplicate", "applied"]
        page = c.get("/api/v1/sync/pull", params={"limit": 500}, headers=worker).json()
        hazards = {ch["id"] for ch in page["changes"] if ch["type"] == "hazard" and not ch["deleted"]}
        assert {kept["data"]["id"], lost["data"]["id"]} <= hazards
    db.engine.dispose()


def test_a_cursor_of_another_database_is_not_taken_for_a_restore(tmp_path, client):
    """Only the copied database's cursors hear "restored": any other epoch is still other_feed."""
    worker = login(client, "worker-a1")
    cursor = Cursor.decode(client.get("/api/v1/sync/pull", headers=worker).json()["cursor"])
    forged = dataclasses.replace(cursor, e="0" * 32).encode()
    r = client.get("/api/v1/sync/pull", params={"cursor": forged}, headers=worker)
    assert r.status_code == 410 and r.json()["error"]["reason"] == "other_feed", r.text


def test_firegrid_restored_marks_a_database_restored_by_other_means(site):
    """pg_dump or a disk snapshot keep the epoch: `firegrid restored` renews it, remembering the old one."""
    db_file, _, _ = site
    conn = sqlite3.connect(db_file)
    (before,) = conn.execute("SELECT epoch FROM change_feed_state").fetchone()
    bad = CliRunner().invoke(cli, ["restored", "--taken-at", "2026-12-01 03:00"])  # no offset: which 3 o'clock?
    assert bad.exit_code == 2 and "with its offset" in bad.output
    ahead = CliRunner().invoke(cli, ["restored", "--taken-at", "2096-12-01T03:00:00+08:00"])  # a typo in the year
    assert ahead.exit_code == 2 and "in the future" in ahead.output
    assert conn.execute("SELECT epoch, restored_from FROM change_feed_state").fetchone() == (before, "[]")
    ok = CliRunner().invoke(cli, ["restored", "--taken-at", "2026-12-01T03:00:00+08:00"])
    assert ok.exit_code == 0, ok.output
    epoch, restored_from = conn.execute("SELECT epoch, restored_from FROM change_feed_state").fetchone()
    [(copied, taken, restored_at)] = json.loads(restored_from)  # and when it was restored: now
    assert epoch != before and (copied, taken) == (before, "2026-12-01T03:00:00+08:00")
    assert datetime.fromisoformat(restored_at) <= datetime.now(timezone.utc)
    conn.close()
