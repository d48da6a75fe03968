"""`firegrid backup` / `firegrid restored` and the pull's `410 restored`, a review's findings: each test failed
before its fix."""

import errno
import hashlib
import logging
import os
import shutil
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone

from fastapi.testclient import TestClient
from typer.testing import CliRunner

import app.backup as backup_mod
from app.cli import cli
from app.config import Settings, get_settings
from app.db import Database, make_engine
from app.main import create_app
from app.photos.storage import FilesystemBlobStore
from tests.conftest import login
from tests.helpers import hazard_data, op, push
from tests.test_backup import backed_up, run_backup, site  # noqa: F401 (fixture)
from tests.test_cli import env_db  # noqa: F401 (fixture)


@contextmanager
def serving(db_file, tmp_path):
    """The app on a SQLite file, as `firegrid serve` would run it."""
    url = f"sqlite:///{db_file}"
    settings = Settings(database_url=url, storage_dir=tmp_path / "blobs", secret_key="t" * 40,
                        sweep_interval_seconds=0)
    db = Database(make_engine(url))
    try:
        with TestClient(create_app(settings, db)) as c:
            yield c
    finally:
        db.engine.dispose()


def restore(copy, live):
    """DEPLOY.md's restore: the copy where FIREGRID_DATABASE_URL points, its -wal/-shm removed, migrate."""
    for f in (live, live.with_name(live.name + "-wal"), live.with_name(live.name + "-shm")):
        f.unlink(missing_ok=True)
    shutil.copyfile(copy, live)
    assert CliRunner().invoke(cli, ["migrate"]).exit_code == 0


def first_place(c, headers):
    return c.get("/api/v1/places", headers=headers).json()["items"][0]["id"]


def says_error(result) -> bool:
    """Exit 2 and one line `error: …` (the database line may come before it: stdout and stderr are mixed)."""
    return result.exit_code == 2 and any(line.startswith("error: ") for line in result.output.splitlines())


def add_blob_row(db_file, name):
    conn = sqlite3.connect(db_file)
    conn.execute("INSERT INTO blobs (sha256, size, mime, width, height, created_at) "
                 "VALUES (?, 100, 'image/jpeg', 64, 48, '2026-12-01 00:00:00.000000')", (name,))
    conn.commit()
    conn.close()


# -- `firegrid restored` ------------------------------------------------------------------------------


def test_restored_run_twice_keeps_the_epoch_the_phones_hold(site, tmp_path):
    """`firegrid restored` overwrote the copied epoch with the database's current epoch every time it ran. Run a
    second time (a retried runbook step, a script re-run, or run on a copy `firegrid backup` had already
    marked), it records the epoch the first run made up, which no phone ever held: the phones' cursors of the
    database that was backed up then get `410 other_feed` instead of `restored`, so they start over WITHOUT
    sending again what they sent after the backup, and those reports are lost for good. The first copied epoch
    should be kept: every epoch a feed descends from is (restored_from)."""
    db_file, _, _ = site
    with serving(db_file, tmp_path) as c:
        worker = login(c, "worker-a1", device="phone-1")
        cursor = c.get("/api/v1/sync/pull", headers=worker).json()["cursor"]
    for _ in range(2):
        ran = CliRunner().invoke(cli, ["restored", "--taken-at", "2026-12-01T03:00:00+08:00"])
        assert ran.exit_code in (0, 2), ran.output  # 2: a second run refused is a fine fix too
    with serving(db_file, tmp_path) as c:
        worker = login(c, "worker-a1", device="phone-1")
        r = c.get("/api/v1/sync/pull", params={"cursor": cursor}, headers=worker)
    assert r.status_code == 410 and r.json()["error"]["reason"] == "restored", r.text


# -- the copy's feed epoch ------------------------------------------------------------------------------


def test_restoring_the_same_copy_twice_refuses_the_first_restores_cursors(site, tmp_path):
    """The copy's new epoch is made once, when `firegrid backup` writes it, not when it is restored. Restore the
    same copy a second time (the first restore went wrong and is redone from the same file, a day later), and
    every cursor the phones got from the first restored server is of the same epoch again: it is accepted, the
    change seqs above the copy's newest are handed out again, and a phone whose cursor is past them never
    receives those changes (here, a report from another phone) -- the very bug the epoch was
    made to prevent. What worker-a1 pushed in between is also lost without it being told to send it again.
    The epoch should be renewed on each restore (e.g. by the first `migrate`/start of a copy), or the copy
    refuse to start twice."""
    db_file, _, _ = site
    found = datetime.now(timezone.utc)
    with serving(db_file, tmp_path) as c:  # both phones were registered long before the backup
        login(c, "worker-a1", device="phone-1")
        login(c, "worker-a1", device="phone-2")
    copy = run_backup(tmp_path / "backup", "--no-photos")
    assert copy.exit_code == 0, copy.output
    [copy] = (tmp_path / "backup").glob("firegrid-*.db")

    restore(copy, db_file)  # the first restore
    with serving(db_file, tmp_path) as c:
        a1 = login(c, "worker-a1", device="phone-1")
        place = first_place(c, a1)
        assert push(c, a1, op("hazard.report", hazard_data(place, found)))[0]["status"] == "applied"
        cursor = c.get("/api/v1/sync/pull", params={"limit": 1000}, headers=a1).json()
        while cursor["more"]:
            cursor = c.get("/api/v1/sync/pull", params={"cursor": cursor["cursor"], "limit": 1000}, headers=a1).json()
        cursor = cursor["cursor"]

    restore(copy, db_file)  # the same copy again
    with serving(db_file, tmp_path) as c:
        other = login(c, "worker-a1", device="phone-2")  # the worker's second phone, or a colleague's
        a1 = login(c, "worker-a1", device="phone-1")
        news = op("hazard.report", hazard_data(place, found))
        assert push(c, other, news)[0]["status"] == "applied"
        r = c.get("/api/v1/sync/pull", params={"cursor": cursor, "limit": 1000}, headers=a1)
        got = {ch["id"] for ch in r.json().get("changes", [])} if r.status_code == 200 else set()
    # either the stale cursor is refused, or it brings worker-a2's report: never a silent gap
    assert r.status_code == 410 or news["data"]["id"] in got, r.text


def test_a_backup_of_a_restored_server_keeps_the_first_restore(site, tmp_path):
    """Each copy keeps only the epoch it copied. Restored once (copy 1 of epoch E0: a phone offline for weeks
    still holds an E0 cursor and has not heard of the restore), then backed up (copy 2 keeps only E1) and
    restored again: that phone's cursor now gets `410 other_feed`, not `restored`, so it never sends again
    the reports it sent between the first backup and the first restore, which neither copy holds. Phones stay
    offline for weeks (token TTL 720 h), so this is in reach. The copy should keep every epoch it descends
    from (a list, or the oldest with its time) and answer `restored` to all of them."""
    db_file, _, _ = site
    with serving(db_file, tmp_path) as c:
        worker = login(c, "worker-a1", device="phone-1")
        old_cursor = c.get("/api/v1/sync/pull", headers=worker).json()["cursor"]  # epoch E0
    assert run_backup(tmp_path / "b1", "--no-photos").exit_code == 0
    [copy1] = (tmp_path / "b1").glob("firegrid-*.db")
    restore(copy1, db_file)  # epoch E1, restored from E0
    assert run_backup(tmp_path / "b2", "--no-photos").exit_code == 0
    [copy2] = (tmp_path / "b2").glob("firegrid-*.db")
    restore(copy2, db_file)  # epoch E2, restored from E1 (and E0 before it)
    with serving(db_file, tmp_path) as c:
        worker = login(c, "worker-a1", device="phone-1")
        r = c.get("/api/v1/sync/pull", params={"cursor": old_cursor}, headers=worker)
    assert r.status_code == 410 and r.json()["error"]["reason"] == "restored", r.text


# -- where the photos are ------------------------------------------------------------------------------


def test_out_whose_blobs_is_the_photo_store_is_refused(site, tmp_path, monkeypatch):
    """With the shipped layout (Dockerfile/compose: FIREGRID_STORAGE_DIR=/data/blobs on the volume /data; dev:
    ./data/blobs beside ./data/firegrid.db), `firegrid backup --out /data` makes OUT/blobs the live photo store
    itself. The run then reports success ("0 copied, N already there") though no photo was copied anywhere: a
    backup that looks whole but dies with the photo volume. Worse, it "cleans up" OUT/blobs/tmp/*.part, which
    are the server's uploads in progress (store/tmp/<sha>-XXXX.part): a grid worker's photo being received is
    deleted under the server. OUT overlapping the store should be an operator error (`error: …`, exit 2)."""
    _, store_root, _ = site
    in_flight = store_root / "tmp" / "0123456789abcdef-upload.part"  # as FilesystemBlobStore._mkstemp names it
    in_flight.parent.mkdir(parents=True, exist_ok=True)
    in_flight.write_bytes(b"half a photo, still arriving")
    result = run_backup(store_root.parent)  # OUT/blobs == the store
    assert in_flight.exists(), "the backup deleted an upload in progress"
    assert says_error(result), result.output


def test_a_symlinked_photo_is_backed_up(site, tmp_path):
    """A photo file (or a fan-out directory ab/ or ab/cd/) of the store that is a symlink, as an operator makes
    it when moving part of the photo volume to another disk, is served by the server (the store follows
    links) but skipped by the backup without a word (`is_file(follow_symlinks=False)`): exit 0, "0 damaged",
    and the restored server has rows naming photos the backup does not have. A symlinked photo should be
    copied (its bytes are checked against its name anyway), or at least named and the run fail."""
    _, store_root, names = site
    name = names[0]
    stored = store_root / name[:2] / name[2:4] / name
    elsewhere = tmp_path / "other-disk" / name
    elsewhere.parent.mkdir()
    shutil.move(stored, elsewhere)
    stored.symlink_to(elsewhere)
    assert FilesystemBlobStore(store_root).has(name)  # the server still serves it
    out = tmp_path / "backup"
    result = run_backup(out)
    assert backed_up(out, name).is_file() or (result.exit_code != 0 and name in result.output), result.output


def test_a_missing_photo_store_is_refused(site, tmp_path, monkeypatch):
    """FIREGRID_STORAGE_DIR pointing where there is no store (unset in the cron's environment, a relative
    ./data/blobs run from another directory, an unmounted volume) while the database names photos: the backup
    prints "photos: 0 copied, 0 already there, 0 damaged" and exits 0, night after night, and no photo is ever
    backed up. The server makes its store at start-up, so a missing store is a mistake the operator must hear
    of: one line `error: …` and exit 2."""
    db_file, _, names = site
    for name in names:
        add_blob_row(db_file, name)  # the photos were uploaded: their rows are in the database
    monkeypatch.setenv("FIREGRID_STORAGE_DIR", str(tmp_path / "not-mounted" / "blobs"))
    get_settings.cache_clear()
    result = run_backup(tmp_path / "backup")
    assert says_error(result), result.output


def test_a_photo_gone_from_the_store_is_named(site, tmp_path):
    """DEPLOY.md: "every photo a row of the copy names is in the backup", and a damaged photo is named with
    exit 1. A photo whose file is gone from the store (deleted by hand, lost on the volume) while its `blobs`
    row is in the copy is neither copied nor named: exit 0, and the operator learns only at restore time that
    a hazard's evidence is gone. The backup should check the copy's `blobs` rows against OUT/blobs and name
    the ones it lacks (exit 1), as it does a damaged one."""
    db_file, store_root, names = site
    for name in names:
        add_blob_row(db_file, name)
    lost = names[2]
    (store_root / lost[:2] / lost[2:4] / lost).unlink()
    out = tmp_path / "backup"
    result = run_backup(out)
    assert result.exit_code == 1 and lost in result.output, result.output


# -- failures part-way ------------------------------------------------------------------------------


def test_a_run_that_fails_copying_photos_leaves_no_database_copy(site, tmp_path, monkeypatch):
    """The database copy takes its final name (firegrid-<time>.db) before any photo is copied. When the photo
    copy then fails (disk full on the backup volume, here simulated), the run says `error: …` and exit 2, but
    leaves a firegrid-*.db that looks like every other good backup while the photos its rows name are not in
    OUT/blobs: the newest database copy, the one an operator restores, is not restorable whole. The copy
    should keep a .part name (or be removed) until the photos are in, as the module promises ("nothing was
    half written under a final name")."""
    _, _, names = site
    import app.backup as backup_mod

    real = backup_mod._copy_verified
    calls = []

    def disk_full(src, name, tmp):
        calls.append(name)
        if len(calls) >= 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
        return real(src, name, tmp)

    monkeypatch.setattr(backup_mod, "_copy_verified", disk_full)
    out = tmp_path / "backup"
    result = run_backup(out)
    assert says_error(result), result.output
    assert not list(out.glob("firegrid-*.db")), "a database copy whose photos are not all in the backup"


def test_verify_copies_again_a_backup_copy_damaged_at_the_same_size(site, tmp_path):
    """A photo already in OUT/blobs is taken as present by its size alone. One damaged on the backup volume
    without changing size (a flipped bit, a sector remapped) is counted "already there" by every later run,
    never replaced from the good copy in the store and never named, though the code says "a damaged or
    cut-short copy from an earlier run is replaced whole": the operator finds out at restore time. Photos in
    the backup should be verified (hash, or at least a recorded size+mtime of a verified copy) or a periodic
    full check offered."""
    _, _, names = site
    out = tmp_path / "backup"
    assert run_backup(out).exit_code == 0
    copy = backed_up(out, names[0])
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    again = run_backup(out, "--verify")
    assert again.exit_code == 0 and "1 copied again (damaged in the backup)" in again.output, again.output
    assert f"photo {names[0]}: its copy in the backup no longer hashed to its name" in again.output
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == names[0]


def test_a_database_copy_left_by_a_crashed_run_is_removed(site, tmp_path):
    """A run killed while copying the database (OOM, reboot, a cron timeout) leaves firegrid-<time>.db.part
    (the size of the database, with its password hashes and owners' phone numbers) and possibly its -wal. The
    next run only removes a .part of its own name, i.e. of the same second, so the leftovers pile up on the
    backup volume for ever (until it fills and the backups themselves fail). Under the OUT lock no other run
    can be writing them: a run should remove every firegrid-*.db.part (and -wal/-journal) it finds."""
    out = tmp_path / "backup"
    out.mkdir()
    left = out / "firegrid-20261130T190000Z.db.part"
    left.write_bytes(b"SQLite format 3\x00" + b"\x00" * 4080)
    result = run_backup(out, "--no-photos")
    assert result.exit_code == 0, result.output
    assert not left.exists()


def jpeg(colour: str) -> tuple[str, bytes]:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buf, "JPEG")
    return hashlib.sha256(buf.getvalue()).hexdigest(), buf.getvalue()


def test_a_photo_uploaded_after_the_snapshot_is_the_phones_again_after_the_restore(site, tmp_path):
    """A photo uploaded after the database snapshot is in the photo store, but its `blobs` row is not in the copy.
    Restored, the phone sends its report again, as told, and asks which photos are missing: the file, hashed to
    its name and named by the phone's own record, gets its row back and is not missing (POST /blobs/missing). A
    phone that freed the photo once the server had it could never send it again: the evidence was lost."""
    db_file, store_root, _ = site
    found = datetime.now(timezone.utc)
    with serving(db_file, tmp_path) as c:
        login(c, "worker-a1", device="phone-1")
    assert run_backup(tmp_path / "backup").exit_code == 0
    [copy] = (tmp_path / "backup").glob("firegrid-*.db")
    name, body = jpeg("orange")
    forged, forged_body = jpeg("purple")
    with serving(db_file, tmp_path) as c:  # after the backup: the photos, then the report naming them
        worker = login(c, "worker-a1", device="phone-1")
        for n, b in ((name, body), (forged, forged_body)):
            put = c.put(f"/api/v1/blobs/{n}", content=b, headers={**worker, "Content-Type": "image/jpeg"})
            assert put.status_code == 201, put.text
        sent = op("hazard.report", hazard_data(first_place(c, worker), found, photos=[name, forged]))
        assert push(c, worker, sent)[0]["status"] == "applied"
    stored = store_root / forged[:2] / forged[2:4] / forged
    stored.write_bytes(forged_body[:-10] + b"\x00" * 10)  # damaged on the volume since: stays missing

    restore(copy, db_file)  # the database disk is lost; the photo volume is not
    with serving(db_file, tmp_path) as c:
        worker = login(c, "worker-a1", device="phone-1")
        other = login(c, "worker-a2", device="phone-2")
        assert c.post("/api/v1/blobs/missing", json={"sha256": [name]}, headers=other).json()["missing"] == [name]
        assert push(c, worker, sent)[0]["status"] == "applied"  # sent again, as the 410 asked
        missing = c.post("/api/v1/blobs/missing", json={"sha256": [name, forged]}, headers=worker).json()["missing"]
        hazard = c.get(f"/api/v1/hazards/{sent['data']['id']}", headers=worker).json()
        shown = c.get(f"/api/v1/blobs/{name}", headers=worker)
    assert missing == [forged] and hazard["photos_pending"] == [forged], (missing, hazard["photos_pending"])
    assert shown.status_code == 200 and shown.content == body


# -- a second review ----------------------------------------------------------------------------------


def whole_pull(c, headers) -> str:
    page = c.get("/api/v1/sync/pull", params={"limit": 1000}, headers=headers).json()
    while page["more"]:
        page = c.get("/api/v1/sync/pull", params={"cursor": page["cursor"], "limit": 1000}, headers=headers).json()
    return page["cursor"]


def test_a_second_restore_of_the_same_copy_tells_the_first_restores_phones(site, tmp_path):
    """The same copy restored twice (the first restore is redone from the same file, a day later, or an older
    copy restored after a newer one: both descend from the same live feed E0). The first restore gave the feed
    epoch E1; phones pulled and pushed on it (worker-a1's report below, sent after the backup). The second
    restore starts again from the copy, which knows only E0, and makes E2 with restored_from [[E0, t]]: the
    phone's E1 cursor gets `410 other_feed`, not `restored`, so the phone starts over WITHOUT sending again the
    report it pushed to the first restored server, which the second does not hold: lost for good, though both
    restores descend from the same backup time t. The cursor should carry the epochs its feed descends from
    (restored_from's, with their times), so a server that descends from one of them answers `restored` with
    that backup's time."""
    db_file, _, _ = site
    found = datetime.now(timezone.utc)
    with serving(db_file, tmp_path) as c:
        login(c, "worker-a1", device="phone-1")
    assert run_backup(tmp_path / "backup", "--no-photos").exit_code == 0
    [copy] = (tmp_path / "backup").glob("firegrid-*.db")

    restore(copy, db_file)  # the first restore: E1
    with serving(db_file, tmp_path) as c:
        a1 = login(c, "worker-a1", device="phone-1")
        sent = op("hazard.report", hazard_data(first_place(c, a1), found))
        assert push(c, a1, sent)[0]["status"] == "applied"
        cursor = whole_pull(c, a1)

    restore(copy, db_file)  # the same copy again: E2, what the first restored server took is gone
    with serving(db_file, tmp_path) as c:
        a1 = login(c, "worker-a1", device="phone-1")
        r = c.get("/api/v1/sync/pull", params={"cursor": cursor}, headers=a1)
        lost = c.get(f"/api/v1/hazards/{sent['data']['id']}", headers=a1).status_code == 404
    assert lost  # the premise: the second restore does not hold the report
    assert r.status_code == 410 and r.json()["error"]["reason"] == "restored", r.text


def test_a_backup_of_a_restored_copy_not_yet_started_keeps_its_backup_time(site, tmp_path):
    """A copy put in place (DEPLOY.md: copy, migrate, audit verify, start) is still marked with the time its
    backup was taken (t1) until the server first starts. If the nightly cron `firegrid backup` runs in between
    (the start delayed while the operator checks the restore), mark_backup_copy overwrites the mark in the new
    copy with t2, while the copy still holds only what was there at t1. Restored from that copy, the phones
    are told to send again what they sent since t2 (less 10 minutes): what they pushed between t1 and t2 to
    the server that died is in neither copy and is never sent again. mark_backup_copy should keep an earlier
    backup_taken_at (the copy is no newer than that)."""
    db_file, _, _ = site
    with serving(db_file, tmp_path) as c:
        login(c, "worker-a1", device="phone-1")
    assert run_backup(tmp_path / "b1", "--no-photos").exit_code == 0
    [copy1] = (tmp_path / "b1").glob("firegrid-*.db")
    (t1,) = sqlite3.connect(copy1).execute("SELECT backup_taken_at FROM change_feed_state").fetchone()
    restore(copy1, db_file)  # in place, migrated, not started yet
    assert run_backup(tmp_path / "b2", "--no-photos").exit_code == 0  # the cron, before the start
    [copy2] = (tmp_path / "b2").glob("firegrid-*.db")
    (t2,) = sqlite3.connect(copy2).execute("SELECT backup_taken_at FROM change_feed_state").fetchone()
    assert t2 == t1, f"the second copy claims to be as of {t2}, but holds only what was there at {t1}"


def test_a_photo_the_store_cannot_read_is_named_and_the_rest_backed_up(site, tmp_path, monkeypatch):
    """One photo file the store cannot read (EIO: a bad sector on the photo volume, the very damage a backup is
    for) makes `_copy_verified` raise OSError: the run stops with `error: …` (exit 2) and leaves NO database
    copy at all, and so does every later run, night after night, until someone repairs that one photo. A
    photo whose bytes cannot be read is damaged in the store: it should be named as one (exit 1) while the
    database copy and every other photo are still backed up (DEPLOY.md: a damaged photo is "named (exit 1)")."""
    _, store_root, names = site
    bad = store_root / names[1][:2] / names[1][2:4] / names[1]
    real_open = open

    def failing_open(path, *args, **kw):
        if os.fspath(path) == os.fspath(bad):
            raise OSError(errno.EIO, os.strerror(errno.EIO), os.fspath(path))
        return real_open(path, *args, **kw)

    monkeypatch.setattr(backup_mod, "open", failing_open, raising=False)
    out = tmp_path / "backup"
    result = run_backup(out)
    assert list(out.glob("firegrid-*.db")), f"no database copy because one photo is unreadable: {result.output}"
    assert result.exit_code == 1 and names[1] in result.output, result.output
    assert backed_up(out, names[0]).is_file() and backed_up(out, names[2]).is_file()


def test_a_no_photos_backup_into_the_photo_store_is_refused(site, tmp_path):
    """DEPLOY.md: "a `DIR` that contains the store, or lies inside it, is refused". With --no-photos it is not
    (_check_places runs only when photos are copied): `firegrid backup --out $FIREGRID_STORAGE_DIR/db
    --no-photos` (a database-only cron beside the photo one) writes the database copies, with their password
    hashes and owners' phone numbers, inside the photo store, on the volume whose loss the backup is for.
    The placement check should not depend on --no-photos (or DEPLOY.md say so)."""
    _, store_root, _ = site
    result = CliRunner().invoke(cli, ["backup", "--out", str(store_root / "db-backups"), "--no-photos"])
    assert result.exit_code == 2 and "error: " in result.output, result.output



def test_a_cursor_past_the_feed_warns_the_operator(site, tmp_path):
    """(An operator's walkthrough.) A database restored by pg_restore or a disk snapshot without `firegrid
    restored` keeps its epoch: a phone's cursor past its newest change is refused (410) and the phone starts
    over without sending again what the restore lost. The server says so in its log, naming the command."""
    db_file, _, _ = site
    with serving(db_file, tmp_path) as c:
        worker = login(c, "worker-a1", device="phone-1")
        place = first_place(c, worker)
        assert run_backup(tmp_path / "b", "--no-photos").exit_code == 0
        assert push(c, worker, op("hazard.report", hazard_data(place, datetime.now(timezone.utc))))[0]["status"] == "applied"
        cursor = c.get("/api/v1/sync/pull", params={"limit": 1000}, headers=worker).json()["cursor"]
    [copy] = (tmp_path / "b").glob("firegrid-*.db")
    conn = sqlite3.connect(copy)  # as if restored by other means: no mark, the same epoch
    conn.execute("UPDATE change_feed_state SET backup_taken_at = NULL")
    conn.commit()
    conn.close()
    restore(copy, db_file)
    said: list[logging.LogRecord] = []
    heard = logging.Handler()
    heard.emit = said.append  # the logger's own: `migrate` (alembic.ini) replaces the root's handlers
    logging.getLogger("firegrid.sync").addHandler(heard)
    try:
        with serving(db_file, tmp_path) as c:
            r = c.get("/api/v1/sync/pull", params={"cursor": cursor}, headers=login(c, "worker-a1", device="phone-1"))
    finally:
        logging.getLogger("firegrid.sync").removeHandler(heard)
    assert r.status_code == 410 and r.json()["error"]["reason"] == "other_feed", r.text
    assert any("firegrid restored --taken-at" in rec.getMessage() for rec in said), [r.getMessage() for r in said]
