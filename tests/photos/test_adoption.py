"""POST /blobs/missing's photo adoption (service.adopt_stored) is for a restored server's photos only, a review's
findings (each test failed before its fix): on a server never restored, a file in the store without its ``blobs``
row was given to whoever named it."""

from __future__ import annotations

import errno
import os
import uuid
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from app.auth.models import User
from app.photos import service
from app.photos.models import Blob
from app.photos.storage import sha256_hex
from app.sync.feed import ChangeFeedState
from tests.conftest import login
from tests.helpers import place_of, report
from tests.photos.conftest import exif_block, jpeg_bytes, two_tone

URL = "/api/v1/blobs"


def _ago() -> datetime:
    return datetime.now(timezone.utc) - timedelta(hours=1)


def _user_id(session, username: str) -> str:
    return session.execute(sa.select(User.id).where(User.username == username)).scalar_one()


def _evidence_photo() -> bytes:
    """A JPEG with GPS and DateTimeOriginal: the evidence of where and when it was taken."""
    return jpeg_bytes(two_tone(80, 40), quality=90, exif=exif_block(1).tobytes())


def test_a_photo_left_without_its_row_by_a_crash_is_not_given_to_who_names_it(client, session, units, monkeypatch):
    """On a server that was never restored: worker-a1 uploads a town-A photo and the process dies between
    publishing the file and inserting its `blobs` row (as the store's docstring allows: "a file left on disk by a
    crash between publishing and the insert"). worker-b1 of town B, who never had the photo, learns its sha256
    and names it in a hazard of its own grid, then calls POST /blobs/missing: adopt_stored finds a file without a
    row and a ref of worker-b1's, and makes worker-b1 its *uploader*. worker-b1 (and office-b) may now download
    town A's evidence, EXIF GPS included, with no proof of possession, which the possession rule ("knowing a
    photo's name lets no one see it") exists to prevent. Adoption must not trust a name alone: limit it to a
    restored server's window (files newer than the copy's backup_taken_at), or to the device that uploaded it
    (a record of the file's uploader kept beside it), or ask for the bytes."""
    data = _evidence_photo()
    sha = sha256_hex(data)
    a1 = login(client, "worker-a1", device="phone-a1")

    real = service._record_blob

    def crash(*args, **kw):
        raise RuntimeError("power cut between publish and insert")

    monkeypatch.setattr(service, "_record_blob", crash)
    r = client.put(f"{URL}/{sha}", content=data, headers={**a1, "Content-Type": "image/jpeg"})
    assert r.status_code >= 500
    monkeypatch.setattr(service, "_record_blob", real)
    assert client.app.state.blob_store.has(sha)  # published, no row

    b1 = login(client, "worker-b1", device="phone-b1")
    place = place_of(session, units, "grid-b-1-1", "rental")
    report(client, b1, place.id, _ago(), photos=[sha])
    missing = client.post(f"{URL}/missing", json={"sha256": [sha]}, headers=b1)
    assert missing.status_code == 200, missing.text
    got = client.get(f"{URL}/{sha}", headers=b1)
    assert got.status_code == 404, "worker-b1 downloaded a town-A photo it never had, by naming it"
    assert missing.json()["missing"] == [sha]


def test_an_upload_in_progress_is_not_adopted_by_who_asks_in_between(client, session, units, monkeypatch):
    """An upload publishes its file and only then inserts its row, in a second transaction. A POST /blobs/missing
    of another user that names the photo in between (a colleague's phone that was sent the hash, a second
    device re-sending a shared report; here worker-a2 of the same town) adopts the file: the `blobs` row, made
    by adopt_stored, names worker-a2 and its device as the photo's uploader, and worker-a1's own insert then finds
    the row taken and only adds it as a holder. The evidence (GPS, time taken, who uploaded it from which device)
    is attributed to a phone that never sent it, and worker-a1, who took the photo, is from then on answered
    without its EXIF evidence on a re-upload (only the uploader sees it). adopt_stored should not adopt a file
    whose upload may still be recording its row (e.g. only files older than the store's temp-file age, or
    only on a restored server), or leave the uploader to the one who sent the bytes."""
    data = _evidence_photo()
    sha = sha256_hex(data)
    a1 = login(client, "worker-a1", device="phone-a1")
    a2 = login(client, "worker-a2", device="phone-a2")
    place = place_of(session, units, "grid-a-2-1", "rental")
    report(client, a2, place.id, _ago(), photos=[sha])  # a2's record names the photo (it has not sent it)

    real = service._record_blob
    asked = []

    def in_between(db, put, uploader, now):
        if not asked:  # another request arrives between publish and the row
            asked.append("asking")
            asked.append(client.post(f"{URL}/missing", json={"sha256": [sha]}, headers=a2).json())
        return real(db, put, uploader, now)

    monkeypatch.setattr(service, "_record_blob", in_between)
    r = client.put(f"{URL}/{sha}", content=data, headers={**a1, "Content-Type": "image/jpeg"})
    assert r.status_code in (200, 201), r.text
    session.expire_all()
    uploader = session.execute(sa.select(Blob.uploaded_by_user_id).where(Blob.sha256 == sha)).scalar_one()
    assert uploader == _user_id(session, "worker-a1"), (
        f"the photo worker-a1 sent is recorded as uploaded by someone else (asked in between: {asked})")


def _stored_without_row(client, colour):
    data = jpeg_bytes(two_tone(80, 40), quality=80 + colour)
    sha = sha256_hex(data)
    client.app.state.blob_store.put_stream(sha, [data], 1 << 20)  # the file, no `blobs` row (lost by a restore)
    return sha


def _set_restores(session, *windows):
    state = session.get(ChangeFeedState, 1)
    state.restored_from = [[uuid.uuid4().hex, t.isoformat(), r.isoformat()] for t, r in windows]
    session.add(state)
    session.flush()


def test_a_photo_of_an_earlier_restores_window_is_adopted_too(client, session, units):
    """(A code review.) Adopted in any restore's window: a phone offline through the first restore is told of it
    after the second, and sends its records again."""
    now = datetime.now(timezone.utc)
    t1, r1 = now - timedelta(days=30), now - timedelta(days=29)  # first restore: lost what came in t1..r1
    t2, r2 = now - timedelta(days=2), now - timedelta(days=1)    # a second, unrelated restore later
    sha = _stored_without_row(client, 1)
    path = client.app.state.blob_store.path(sha)
    at = (t1 + timedelta(hours=3)).timestamp()
    os.utime(path, (at, at))  # uploaded in the first window; its phone was offline for weeks
    _set_restores(session, (t1, r1), (t2, r2))
    worker = login(client, "worker-a1", device="phone-1")
    place = place_of(session, units, "grid-a-1-1", "rental")
    report(client, worker, place.id, now - timedelta(hours=1), photos=[sha])  # its report sent again, as told
    missing = client.post(f"{URL}/missing", json={"sha256": [sha]}, headers=worker).json()["missing"]
    assert missing == [], "a photo the first restore lost is still asked of a phone that may have freed it"


# -- 2. One unreadable file in the store (EIO) makes every POST /blobs/missing that names it a 500: the phone
#       can never learn which of its photos are missing. backup.py treats the same EIO as the photo's damage.

def test_an_unreadable_stored_file_is_missing_not_a_500(client, session, units, monkeypatch):
    """(A code review.) A bad sector under one photo: it stays missing, and the phone still gets its answer."""
    now = datetime.now(timezone.utc)
    sha = _stored_without_row(client, 2)
    _set_restores(session, (now - timedelta(hours=2), now + timedelta(minutes=1)))
    worker = login(client, "worker-a1", device="phone-1")
    place = place_of(session, units, "grid-a-1-1", "rental")
    report(client, worker, place.id, now - timedelta(hours=1), photos=[sha])

    def eio(path):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))

    monkeypatch.setattr(service, "sha256_file", eio)  # a bad sector under that one photo
    r = client.post(f"{URL}/missing", json={"sha256": [sha]}, headers=worker)
    assert r.status_code == 200 and r.json()["missing"] == [sha], (r.status_code, r.text[:300])
