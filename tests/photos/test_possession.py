"""Proof of possession: knowing a photo's name (its sha256) shows no one the photo.

A grid worker of town B who learnt the hash of a town A photo names it in a hazard of their own grid:
neither they nor their town office may download it until the worker's phone sends bytes that hash to
the name. Those who already see the photo attach it freely (and then hold it); the uploader keeps the
200 answer that needs no body."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlmodel import Session, func, select

from app import migrate
from app.auth.models import User
from app.db import make_engine
from app.photos import service
from app.photos.models import Blob, BlobHolder, PhotoRef
from app.photos.storage import sha256_hex
from tests.conftest import fresh_database_url, login
from tests.helpers import hazard_data, op, place_of, push, report
from tests.photos.conftest import jpeg_bytes, noisy_rgb, two_tone
from tests.photos.test_api import _asgi_put, blob_files, count_blobs, put, tmp_files

URL = "/api/v1/blobs"


def _ago(hours: float = 1) -> datetime:
    return datetime.now(timezone.utc) - timedelta(hours=hours)


def _user_id(session, username: str) -> str:
    return session.exec(select(User.id).where(User.username == username)).one()


def _holders(session, sha: str) -> set[str]:
    """Who holds the photo: its first uploader (the blobs row) and the blob_holders rows."""
    session.expire_all()
    uploader = session.exec(select(Blob.uploaded_by_user_id).where(Blob.sha256 == sha)).first()
    rows = set(session.exec(select(BlobHolder.user_id).where(BlobHolder.sha256 == sha)).all())
    return rows | ({uploader} if uploader else set())


def _hazard(client, session, units, who: dict, grid: str, photos: list[str], **kw) -> str:
    place = place_of(session, units, grid, "rental")
    return report(client, who, place.id, _ago(), photos=photos, **kw)["hazard_id"]


def _pending(client, hid: str, who: dict) -> list[str]:
    r = client.get(f"/api/v1/hazards/{hid}", headers=who)
    assert r.status_code == 200, r.text
    return r.json()["photos_pending"]


def _missing(client, who: dict, shas: list[str]) -> list[str]:
    r = client.post(f"{URL}/missing", json={"sha256": shas}, headers=who)
    assert r.status_code == 200, r.text
    return r.json()["missing"]


@pytest.fixture
def root(settings):
    return settings.storage_dir


@pytest.fixture
def photo() -> bytes:
    return jpeg_bytes(two_tone(80, 40), quality=90)


@pytest.fixture
def stolen(client, session, units, photo):
    """A town A photo (uploaded by worker-a1, on a hazard of grid-a-1-1) whose name worker-b1 names in a
    hazard of their own grid, without ever sending the bytes. -> (sha, town A hazard, town B hazard)."""
    sha = sha256_hex(photo)
    a1 = login(client, "worker-a1")
    assert put(client, a1, photo).status_code == 201
    hid_a = _hazard(client, session, units, a1, "grid-a-1-1", [sha])
    hid_b = _hazard(client, session, units, login(client, "worker-b1"), "grid-b-1-1", [sha])
    return sha, hid_a, hid_b


# -- (1) a name proves nothing ---------------------------------------------------------------------


def test_naming_a_stored_photo_in_ones_own_hazard_shows_it_to_no_one(client, session, stolen):
    sha, hid_a, hid_b = stolen
    b1, office_b = login(client, "worker-b1"), login(client, "office-b")
    for who in (b1, office_b):
        for path in (f"{URL}/{sha}", f"{URL}/{sha}/thumb", f"{URL}/{sha}/display"):
            r = client.get(path, headers=who)
            assert r.status_code == 404, (path, r.text)
            assert r.json()["error"]["code"] == "photo_pending"  # as their record shows it, nothing more
    # their hazard shows the photo as still on the phone, and their phone is told to send it
    assert _pending(client, hid_b, office_b) == [sha]
    assert _pending(client, hid_b, b1) == [sha]
    assert _missing(client, b1, [sha]) == [sha]
    # what a registration answers for the op: still on the phone
    assert service.register_refs(session, hid_b, "hazard", hid_b, [sha], added_by=_user_id(session, "worker-b1")) == [sha]
    assert service.pending_for_hazards(session, [hid_a, hid_b]) == {hid_b: [sha]}
    # town A is untouched: its photo, its hazard
    for who in ("worker-a1", "office-a"):
        assert client.get(f"{URL}/{sha}", headers=login(client, who)).status_code == 200, who
    assert _pending(client, hid_a, login(client, "office-a")) == []
    assert _missing(client, login(client, "worker-a1"), [sha]) == []
    ref = session.exec(select(PhotoRef).where(PhotoRef.hazard_id == hid_b)).one()
    assert ref.added_by_user_id == _user_id(session, "worker-b1")


def test_naming_a_photo_does_not_take_it_from_its_uploader(client, session, units, photo):
    """Uploaded, not yet on a record: someone else naming it neither shows it to them nor hides it from its
    uploader."""
    sha = sha256_hex(photo)
    a1 = login(client, "worker-a1")
    assert put(client, a1, photo).status_code == 201
    _hazard(client, session, units, login(client, "worker-b1"), "grid-b-1-1", [sha])
    assert client.get(f"{URL}/{sha}", headers=a1).status_code == 200
    assert client.get(f"{URL}/{sha}", headers=login(client, "worker-b1")).status_code == 404


def test_a_duplicate_merged_in_brings_its_unproven_photo_along_unproven(client, session, units, photo):
    sha = sha256_hex(photo)
    assert put(client, login(client, "worker-a1"), photo).status_code == 201
    b1, office_b = login(client, "worker-b1"), login(client, "office-b")
    target = _hazard(client, session, units, b1, "grid-b-1-1", [], category="lpg_misuse")
    dup = _hazard(client, session, units, b1, "grid-b-1-1", [sha], category="window_bars")
    r = client.post(f"/api/v1/hazards/{dup}/actions", json={"action": "merge", "merge_into_id": target},
                    headers=office_b)
    assert r.status_code == 200, r.text
    assert sha in client.get(f"/api/v1/hazards/{target}", headers=office_b).json()["photos"]
    assert _pending(client, target, office_b) == [sha]
    assert client.get(f"{URL}/{sha}", headers=office_b).status_code == 404


# -- (2) the bytes prove it ------------------------------------------------------------------------


def test_sending_the_bytes_proves_possession_without_storing_them_again(client, session, stolen, photo, root):
    sha, _, hid_b = stolen
    b1, office_b = login(client, "worker-b1"), login(client, "office-b")
    [stored] = blob_files(root, sha)
    before = stored.stat()
    row_before = session.get(Blob, sha).uploaded_by_user_id

    r = put(client, b1, photo)
    assert r.status_code == 200, r.text
    assert r.json()["sha256"] == sha and r.json()["created"] is False

    assert client.get(f"{URL}/{sha}", headers=b1).content == photo
    assert client.get(f"{URL}/{sha}", headers=office_b).status_code == 200
    assert _pending(client, hid_b, office_b) == []
    assert _missing(client, b1, [sha]) == []
    assert _user_id(session, "worker-b1") in _holders(session, sha)
    # one file, the same one, never rewritten; one row, still the first uploader's
    [after] = blob_files(root, sha)
    assert (after.stat().st_ino, after.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert tmp_files(root) == [] and count_blobs(session, sha) == 1
    session.expire_all()
    assert session.get(Blob, sha).uploaded_by_user_id == row_before == _user_id(session, "worker-a1")


def test_a_non_holder_must_send_the_body_even_with_expect_100_continue(client, session, stolen, photo):
    """The short cut is for holders: anyone else's body is asked for, read and hashed."""
    sha, _, _ = stolen
    token = login(client, "worker-b1")["Authorization"]
    read = []

    def body():
        read.append(True)
        return {"type": "http.request", "body": photo, "more_body": False}

    status, answer = _asgi_put(client, f"{URL}/{sha}", {"authorization": token, "content-length": str(len(photo)),
                                                         "content-type": "image/jpeg", "expect": "100-continue"},
                               [body])
    assert status == 200 and b'"created":false' in answer
    assert read == [True]
    assert _user_id(session, "worker-b1") in _holders(session, sha)


# -- (3) wrong bytes prove nothing -----------------------------------------------------------------


@pytest.mark.parametrize("body", ["other_photo", "empty"])
def test_wrong_bytes_under_a_stored_name_are_422_and_grant_nothing(client, session, stolen, root, body):
    sha, _, hid_b = stolen
    b1 = login(client, "worker-b1")
    data = jpeg_bytes(noisy_rgb(64, 48, seed=5)) if body == "other_photo" else b""
    [stored] = blob_files(root, sha)
    before = stored.read_bytes()
    r = put(client, b1, data, name=sha)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "hash_mismatch"
    assert _user_id(session, "worker-b1") not in _holders(session, sha)
    assert client.get(f"{URL}/{sha}", headers=b1).status_code == 404
    assert client.get(f"{URL}/{sha}", headers=login(client, "office-b")).status_code == 404
    assert _pending(client, hid_b, login(client, "office-b")) == [sha]
    assert stored.read_bytes() == before and tmp_files(root) == [] and count_blobs(session, sha) == 1


# -- (4) the uploader's short cut ------------------------------------------------------------------


@pytest.mark.parametrize("expect", [True, False])
def test_the_uploader_still_gets_200_without_sending_the_body(client, session, stolen, photo, expect):
    sha, _, _ = stolen

    def must_not_read():
        raise AssertionError("the body was read")

    headers = {**login(client, "worker-a1"), "content-length": str(len(photo))}
    if expect:
        headers["expect"] = "100-continue"
    status, answer = _asgi_put(client, f"{URL}/{sha}", headers, [must_not_read])
    assert status == 200 and b'"created":false' in answer
    assert _holders(session, sha) == {_user_id(session, "worker-a1")}


def test_one_who_may_see_the_photo_gets_the_short_cut_too_without_its_evidence(client, session, units, exif_jpeg):
    sha = sha256_hex(exif_jpeg)
    a1 = login(client, "worker-a1")
    assert put(client, a1, exif_jpeg).status_code == 201
    _hazard(client, session, units, a1, "grid-a-1-1", [sha])

    def must_not_read():
        raise AssertionError("the body was read")

    status, answer = _asgi_put(client, f"{URL}/{sha}", {**login(client, "office-a"),
                                                        "content-length": str(len(exif_jpeg))}, [must_not_read])
    assert status == 200 and b'"created":false' in answer
    assert b'"gps_lat":null' in answer and b'"exif_datetime":null' in answer  # where and when: the uploader's
    assert _user_id(session, "office-a") in _holders(session, sha)  # seeing it is as good as sending it
    status, answer = _asgi_put(client, f"{URL}/{sha}", {**a1, "content-length": str(len(exif_jpeg))}, [must_not_read])
    assert status == 200 and b'"gps_lat":null' not in answer


# -- (5) attaching what one already sees -----------------------------------------------------------


def test_an_office_attaching_a_photo_it_sees_keeps_it_visible(client, session, units, photo):
    sha = sha256_hex(photo)
    a1 = login(client, "worker-a1")
    assert put(client, a1, photo).status_code == 201
    _hazard(client, session, units, a1, "grid-a-1-1", [sha])
    other = _hazard(client, session, units, login(client, "worker-a2"), "grid-a-2-1", [])
    office = login(client, "office-a")
    assert client.get(f"{URL}/{sha}", headers=login(client, "worker-a2")).status_code == 404  # not their grid's

    r = client.post(f"/api/v1/hazards/{other}/actions", json={"action": "accept", "photos": [sha]}, headers=office)
    assert r.status_code == 200, r.text
    assert r.json()["photos_pending"] == []
    assert _user_id(session, "office-a") in _holders(session, sha)  # it could have downloaded it
    assert client.get(f"{URL}/{sha}", headers=office).status_code == 200
    # the evidence now on their hazard: the grid worker of that hazard sees it
    assert client.get(f"{URL}/{sha}", headers=login(client, "worker-a2")).status_code == 200
    assert _missing(client, office, [sha]) == []


def test_a_worker_reusing_a_photo_they_see_in_a_reinspection(client, session, units, photo):
    """office-a's photo on worker-a1's hazard: the worker re-uses it in a re-inspection from the field."""
    sha = sha256_hex(photo)
    a1, office = login(client, "worker-a1"), login(client, "office-a")
    hid = _hazard(client, session, units, a1, "grid-a-1-1", [])
    assert put(client, office, photo).status_code == 201
    r = client.post(f"/api/v1/hazards/{hid}/actions", json={"action": "accept", "photos": [sha]}, headers=office)
    assert r.status_code == 200, r.text
    assert _missing(client, a1, [sha]) == []  # sees it: not asked to send it
    [res] = push(client, a1, op("hazard.reinspect", {"id": "r-" + sha[:8], "hazard_id": hid, "rectified": True,
                                                     "note": "已整改", "at": _ago(0.5).isoformat(), "photos": [sha]}))
    assert res["status"] == "applied", res
    assert _user_id(session, "worker-a1") in _holders(session, sha)
    assert _pending(client, hid, office) == []


# -- (6) replays -----------------------------------------------------------------------------------


def test_replaying_the_naming_push_changes_nothing(client, session, units, photo):
    sha = sha256_hex(photo)
    assert put(client, login(client, "worker-a1"), photo).status_code == 201
    b1 = login(client, "worker-b1")
    place = place_of(session, units, "grid-b-1-1", "rental")
    naming = op("hazard.report", hazard_data(place.id, _ago(), photos=[sha]))

    def state():
        session.expire_all()
        refs = session.exec(select(PhotoRef.hazard_id, PhotoRef.record_kind, PhotoRef.record_id,
                                   PhotoRef.added_by_user_id).where(PhotoRef.sha256 == sha)
                            .order_by(PhotoRef.id)).all()
        return refs, _holders(session, sha)

    [first] = push(client, b1, naming)
    assert first["status"] == "applied"
    once = state()
    for _ in range(3):
        [again] = push(client, b1, naming)
        assert again["status"] == "duplicate" and again["result"] == first["result"]
        assert state() == once
        assert client.get(f"{URL}/{sha}", headers=b1).status_code == 404
        assert client.get(f"{URL}/{sha}", headers=login(client, "office-b")).status_code == 404
    hid = first["result"]["hazard_id"]
    b1_id = _user_id(session, "worker-b1")
    for _ in range(3):
        assert service.register_refs(session, hid, "hazard", hid, [sha], added_by=b1_id) == [sha]
    assert state() == once
    # proven once, the same thrice: one holder row
    for _ in range(3):
        assert put(client, b1, photo).status_code == 200
    assert _holders(session, sha) == once[1] | {b1_id}
    assert client.get(f"{URL}/{sha}", headers=login(client, "office-b")).status_code == 200


# -- (7) the migration -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_migration_keeps_every_uploader_holding_and_old_refs_counting(backend, tmp_path):
    """An uploader holds by the blobs row (uploaded_by_user_id), so photos stored before need no holder rows;
    refs stored before have no adder and count. Down again, the table goes."""
    url, cleanup = fresh_database_url(backend, tmp_path)
    engine = make_engine(url)
    a, none = "a" * 64, "c" * 64
    blob = ("INSERT INTO blobs (sha256, size, mime, width, height, created_at, uploaded_by_user_id) "
            "VALUES (:sha, 1, 'image/jpeg', 1, 1, CURRENT_TIMESTAMP, :user)")
    try:
        migrate.upgrade(url, revision="0014")
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO org_units (id, code, name, kind, enforcement_power) "
                                 "VALUES ('g1', 'grid-1', '网格', 'grid', false)"))
            conn.execute(sa.text(
                "INSERT INTO users (id, username, display_name, password_hash, role, org_unit_id, is_active, "
                "is_demo, created_at) VALUES ('u1', 'one', '', 'x', 'grid_worker', 'g1', true, false, "
                "CURRENT_TIMESTAMP)"))
            conn.execute(sa.text(blob), [{"sha": a, "user": "u1"}, {"sha": none, "user": None}])
        migrate.upgrade(url)
        with Session(engine) as s:
            assert s.execute(sa.select(service._HOLDS).select_from(Blob).where(Blob.sha256 == a),
                             {"user_id": "u1"}).scalar() is True
            assert s.execute(sa.select(func.count()).select_from(BlobHolder)).scalar() == 0
        with engine.connect() as conn:  # refs stored before get no adder: they count (test below)
            column = {c["name"]: c for c in sa.inspect(conn).get_columns("photo_refs")}["added_by_user_id"]
            assert column["nullable"] and column.get("default") is None
        migrate.downgrade(url, revision="0014")
        with engine.connect() as conn:
            assert "blob_holders" not in sa.inspect(conn).get_table_names()
    finally:
        engine.dispose()
        cleanup()


def test_refs_from_before_the_rule_still_count(client, session, units, photo):
    """A ref with no adder (stored before proof of possession) counts, as it did."""
    sha = sha256_hex(photo)
    assert put(client, login(client, "worker-a1"), photo).status_code == 201
    hid = _hazard(client, session, units, login(client, "worker-a2"), "grid-a-2-1", [])
    assert service.register_refs(session, hid, "hazard", hid, [sha]) == []
    session.commit()
    assert session.exec(select(func.count()).select_from(PhotoRef)
                        .where(PhotoRef.hazard_id == hid, PhotoRef.added_by_user_id.is_(None))).one() == 1
    assert client.get(f"{URL}/{sha}", headers=login(client, "worker-a2")).status_code == 200


def test_device_health_counts_an_unproven_photo_as_still_on_the_phone(client, session, stolen, photo):
    """The office's list of phones with photos still on them counts a photo named but not proven held: that
    phone must still send it."""
    from tests.sync.test_health import _health

    b1 = login(client, "worker-b1")
    device = client.get("/api/v1/me", headers=b1).json()["device_id"]

    def pending() -> int:
        return next(h for h in _health(client, "office-b") if h["device_id"] == device)["pending_media"]

    assert pending() == 1
    assert put(client, b1, photo).status_code == 200
    assert pending() == 0


def test_a_photo_named_before_its_namer_could_see_it_counts_once_they_may(client, session, units):
    """Named while its namer could not see it (pending), then shown to them on another record: their next
    /blobs/missing or PUT makes them a holder, so the first record's photo counts; else it stayed on the
    phone for good while the phone was told there was nothing to send."""
    photo = jpeg_bytes(two_tone(80, 40), quality=90)
    sha = sha256_hex(photo)
    office, a1 = login(client, "office-a", device="desk"), login(client, "worker-a1")
    assert put(client, office, photo).status_code == 201          # the office holds it (first uploader)
    place = place_of(session, units, "grid-a-1-1", "rental")
    at = datetime.now(timezone.utc) - timedelta(hours=1)
    h1 = report(client, a1, place.id, at, photos=[sha], category="ebike_indoor")["hazard_id"]  # a1's own copy
    h2 = report(client, a1, place.id, at, photos=[], category="lpg_misuse")["hazard_id"]
    r = client.post(f"/api/v1/hazards/{h2}/actions", json={"action": "accept", "photos": [sha]}, headers=office)
    assert r.status_code == 200, r.text                            # now a1 sees the photo through h2
    missing = client.post(f"{URL}/missing", json={"sha256": [sha]}, headers=a1).json()["missing"]
    r = put(client, a1, photo)                                     # the phone sends it anyway
    assert r.status_code == 200, r.text
    pending = client.get(f"/api/v1/hazards/{h1}", headers=office).json()["photos_pending"]
    health = {d["username"]: d["pending_media"] for d in client.get("/api/v1/devices/health", headers=office).json()}
    assert (missing, pending, health["worker-a1"]) == ([], [], 0)


def test_a_duplicate_whose_reporter_holds_the_photo_proves_it_on_the_original(client, session, units, photo):
    """worker-a1 named a photo without ever sending it (the original: pending); a second worker of the same
    grid, who took it and uploaded it, reported the same hazard. The office merges the duplicate into the
    original: the original's one ref to the photo now counts (before, the unique key kept worker-a1's
    unproven ref, and the photo stayed 'on the phone')."""
    from app.auth.models import Role
    from app.auth.service import create_user
    from app.demo import DEMO_PASSWORD

    create_user(session, username="worker-a1b", password=DEMO_PASSWORD, role=Role.grid_worker,
                unit=units["grid-a-1-1"])
    session.commit()
    sha = sha256_hex(photo)
    a1, a1b, office = login(client, "worker-a1"), login(client, "worker-a1b"), login(client, "office-a", device="desk")
    assert put(client, a1b, photo).status_code == 201
    place = place_of(session, units, "grid-a-1-1", "rental")
    at = datetime.now(timezone.utc) - timedelta(hours=2)
    original = report(client, a1, place.id, at, photos=[sha], category="lpg_misuse")["hazard_id"]
    dup = report(client, a1b, place.id, at, photos=[sha], category="window_bars")["hazard_id"]
    assert _pending(client, original, office) == [sha]  # worker-a1 never sent it
    r = client.post(f"/api/v1/hazards/{dup}/actions", json={"action": "merge", "merge_into_id": original},
                    headers=office)
    assert r.status_code == 200, r.text
    assert _pending(client, original, office) == []
    refs = session.exec(select(PhotoRef).where(PhotoRef.record_id == original, PhotoRef.sha256 == sha)).all()
    assert [r.added_by_user_id for r in refs] == [_user_id(session, "worker-a1b")]
