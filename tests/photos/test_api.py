"""/api/v1/blobs through the app, on both database backends: upload, refusal of bad images,
the missing query, who may see a photo, caching, and an upload cut off half-way."""

from __future__ import annotations

import io
import os
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from PIL import Image
from sqlmodel import func, select

from app.photos import service
from app.photos.models import Blob, PhotoRef
from app.photos.storage import FilesystemBlobStore, sha256_hex
from tests.conftest import login
from tests.helpers import place_of, report, statements_on, uid
from tests.photos.conftest import EXIF_DATETIME, GPS_LAT, GPS_LON, jpeg_bytes, noisy_rgb

URL = "/api/v1/blobs"


def put(client, headers, data: bytes, name: str | None = None, **kw):
    return client.put(f"{URL}/{name or sha256_hex(data)}", content=data,
                      headers={**headers, "Content-Type": "image/jpeg"}, **kw)


def blob_files(root, sha: str) -> list:
    return [p for p in root.rglob(sha) if p.is_file() and p.relative_to(root).parts[0] not in ("derivatives", "tmp")]


def tmp_files(root) -> list:
    return [p for p in (root / "tmp").glob("*")] if (root / "tmp").is_dir() else []


def count_blobs(session, sha: str) -> int:
    return session.exec(select(func.count()).select_from(Blob).where(Blob.sha256 == sha)).one()


@pytest.fixture
def worker(client):
    return login(client, "worker-a1")


@pytest.fixture
def root(settings):
    return settings.storage_dir


@pytest.fixture
def town_a_hazard(client, session, units, worker):
    """report(photos=[...]) -> hazard id: a hazard reported by worker-a1 in town A, held by office-a.

    The refs are registered here too, as the hazard services do (idempotent either way)."""

    def _report(photos: list[str]) -> str:
        place = place_of(session, units, "grid-a-1-1", "rental")
        res = report(client, worker, place.id, datetime.now(timezone.utc) - timedelta(hours=1), photos=photos)
        hid = res["hazard_id"]
        service.register_refs(session, hid, "hazard", hid, photos)
        session.commit()
        return hid

    return _report


# -- upload ----------------------------------------------------------------------------------


def test_upload_201_then_200_stored_once_with_exif_evidence(client, worker, exif_jpeg, root, session):
    sha = sha256_hex(exif_jpeg)
    r = put(client, worker, exif_jpeg)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["sha256"] == sha and body["created"] is True and body["size"] == len(exif_jpeg)
    assert (body["mime"], body["width"], body["height"], body["orientation"]) == ("image/jpeg", 80, 40, 6)
    assert body["exif_datetime"] == EXIF_DATETIME
    assert body["gps_lat"] == pytest.approx(GPS_LAT, abs=1e-6) and body["gps_lon"] == pytest.approx(GPS_LON, abs=1e-6)

    again = put(client, login(client, "worker-a2"), exif_jpeg)
    assert again.status_code == 200, again.text
    assert again.json()["created"] is False and again.json()["sha256"] == sha

    assert len(blob_files(root, sha)) == 1 and tmp_files(root) == []
    assert count_blobs(session, sha) == 1
    row = session.get(Blob, sha)
    assert row.exif_datetime == EXIF_DATETIME and row.gps_lat == pytest.approx(GPS_LAT, abs=1e-6)
    assert row.uploaded_by_user_id is not None and row.uploaded_by_device_id is not None


@pytest.mark.parametrize("fixture,mime", [("png_image", "image/png"), ("webp_image", "image/webp"),
                                          ("big_jpeg", "image/jpeg")])
def test_accepted_types_sniffed_by_content(client, worker, request, fixture, mime):
    data = request.getfixturevalue(fixture)
    r = client.put(f"{URL}/{sha256_hex(data)}", content=data,
                   headers={**worker, "Content-Type": "application/octet-stream"})  # the header is not trusted
    assert r.status_code == 201, r.text
    assert r.json()["mime"] == mime


def test_wrong_hash_is_422_and_nothing_stored(client, worker, big_jpeg, png_image, root, session):
    name = sha256_hex(png_image)
    r = put(client, worker, big_jpeg, name=name)
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "hash_mismatch" and err["expected"] == name and err["actual"] == sha256_hex(big_jpeg)
    assert blob_files(root, name) == [] and blob_files(root, sha256_hex(big_jpeg)) == [] and tmp_files(root) == []
    assert count_blobs(session, name) == 0


@pytest.mark.parametrize("fixture,status,code", [
    ("text_as_jpg", 415, "unsupported_media_type"),
    ("truncated_jpeg", 422, "truncated_image"),
    ("truncated_progressive_jpeg", 422, "truncated_image"),
    ("png_bomb_header", 422, "decompression_bomb"),
])
def test_bad_images_refused_cleanly(client, worker, request, root, session, fixture, status, code):
    data = request.getfixturevalue(fixture)
    sha = sha256_hex(data)
    r = put(client, worker, data)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert blob_files(root, sha) == [] and tmp_files(root) == [] and count_blobs(session, sha) == 0


def test_garbage_after_a_jpeg_header_is_422(client, worker, root):
    data = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8
    r = put(client, worker, data)
    assert r.status_code == 422 and r.json()["error"]["code"] in ("corrupt_image", "truncated_image")


def test_too_large_413_from_content_length_and_while_streaming(client, worker, big_jpeg, settings, root):
    settings.max_photo_bytes = 10_000  # the very object the app reads
    sha = sha256_hex(big_jpeg)
    r = put(client, worker, big_jpeg)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"

    def chunks():  # no Content-Length: chunked transfer, caught as the bytes arrive
        for i in range(0, len(big_jpeg), 4096):
            yield big_jpeg[i:i + 4096]

    r = client.put(f"{URL}/{sha}", content=chunks(), headers=worker)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    assert blob_files(root, sha) == [] and tmp_files(root) == []


def test_invalid_name_and_no_token(client, worker, png_image):
    r = put(client, worker, png_image, name="not-a-hash")
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_sha256"
    r = put(client, worker, png_image, name=sha256_hex(png_image).upper())
    assert r.status_code == 422
    r = client.put(f"{URL}/{sha256_hex(png_image)}", content=png_image)
    assert r.status_code == 401
    # a stranger learns nothing, not even that a name is malformed
    r = client.put(f"{URL}/not-a-hash", content=png_image, headers={"Authorization": "Bearer not-a-token"})
    assert r.status_code == 401, r.text
    r = client.put(f"{URL}/{sha256_hex(png_image)}", content=png_image, headers={"Authorization": "Basic d29ya2Vy"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text


def test_the_upload_documents_its_bearer_token(client):
    """The PUT reads its token without a dependency (app/photos/router.py): the schema still says it takes one."""
    put_op = client.get("/openapi.json").json()["paths"]["/api/v1/blobs/{sha256}"]["put"]
    assert put_op["security"] == [{"HTTPBearer": []}]


def test_an_upload_of_a_new_photo_checks_token_and_name_in_one_statement(client, worker, png_image, db):
    """Before the body: the token check and whether the photo is stored are one statement
    (bench/instructions.py), and a stored photo's row is read only when it is stored."""
    with statements_on(db.connection) as new_photo:
        assert put(client, worker, png_image).status_code == 201
    with statements_on(db.connection) as again:
        assert put(client, worker, png_image).status_code == 200  # stored: its row, for the answer
    assert len(new_photo) == 2, new_photo  # the check before the body, then the row's insert after it
    assert "INSERT INTO blobs" in new_photo[1]
    assert len(again) == 2 and "FROM blobs" in again[1], again


# -- missing ---------------------------------------------------------------------------------


def test_missing_lists_what_the_server_lacks(client, worker, png_image, webp_image):
    have, lack = sha256_hex(png_image), sha256_hex(webp_image)
    assert put(client, worker, png_image).status_code == 201
    r = client.post(f"{URL}/missing", json={"sha256": [lack, have, lack]}, headers=worker)
    assert r.status_code == 200 and r.json() == {"missing": [lack]}
    assert client.post(f"{URL}/missing", json={"sha256": []}, headers=worker).json() == {"missing": []}


def test_missing_validates_names_and_size(client, worker):
    r = client.post(f"{URL}/missing", json={"sha256": ["a" * 64, "nope"]}, headers=worker)
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "sha256.1" and "sha256.1" in r.json()["error"]["message"]
    r = client.post(f"{URL}/missing", json={"sha256": ["a" * 64] * 501}, headers=worker)
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == "sha256"
    assert client.post(f"{URL}/missing", json={"sha256": []}).status_code == 401


def test_missing_counts_a_file_lost_from_disk(client, worker, png_image, root):
    sha = sha256_hex(png_image)
    put(client, worker, png_image)
    FilesystemBlobStore(root).delete(sha)
    r = client.post(f"{URL}/missing", json={"sha256": [sha]}, headers=worker)
    assert r.json() == {"missing": [sha]}
    assert put(client, worker, png_image).status_code == 200  # re-sent: the file is back, the row was there
    assert len(blob_files(root, sha)) == 1


# -- refs and pending media ------------------------------------------------------------------


def test_record_before_photo_is_pending_until_it_arrives(client, worker, town_a_hazard, session, big_jpeg, png_image):
    a, b = sha256_hex(big_jpeg), sha256_hex(png_image)
    assert put(client, worker, png_image).status_code == 201  # one photo first, the other after the record
    hid = town_a_hazard([a, b])
    assert service.pending_for_hazard(session, hid) == [a]
    assert service.register_refs(session, hid, "hazard", hid, [a, b, a]) == [a]  # idempotent
    assert session.exec(select(func.count()).select_from(PhotoRef).where(PhotoRef.hazard_id == hid)).one() == 2
    assert put(client, worker, big_jpeg).status_code == 201
    assert service.pending_for_hazard(session, hid) == []
    assert service.pending_for_hazards(session, [hid]) == {}
    assert service.hazards_using(session, a) == [hid]
    with pytest.raises(ValueError):
        service.register_refs(session, hid, "comment", hid, [a])


def test_bulk_refs_for_a_sync_batch(client, worker, town_a_hazard, session, png_image):
    stored = sha256_hex(png_image)
    put(client, worker, png_image)
    hid = town_a_hazard([])
    shas = [f"{i:064x}" for i in range(1000)]  # more than one statement's worth
    refs = [(hid, "reinspection", uid(), shas[i:i + 10] + [stored]) for i in range(0, 1000, 10)]
    assert service.register_refs_bulk(session, refs) == shas
    assert service.register_refs_bulk(session, refs) == shas  # replayed batch: nothing new
    n = session.exec(select(func.count()).select_from(PhotoRef).where(PhotoRef.hazard_id == hid)).one()
    assert n == 1000 + 100
    assert service.pending_for_hazard(session, hid) == shas
    assert service.register_refs_bulk(session, []) == []


# -- reading: permissions, derivatives, caching ----------------------------------------------


def test_who_may_see_a_photo(client, worker, town_a_hazard, exif_jpeg):
    sha = sha256_hex(exif_jpeg)
    assert put(client, worker, exif_jpeg).status_code == 201
    town_a_hazard([sha])
    for who in ("office-a", "police-a", "worker-a1", "brigade", "admin"):
        h = login(client, who)
        r = client.get(f"{URL}/{sha}", headers=h)
        assert r.status_code == 200, (who, r.text)
        assert r.content == exif_jpeg and r.headers["content-type"] == "image/jpeg"
        assert client.get(f"{URL}/{sha}/thumb", headers=h).status_code == 200
    for who in ("office-b", "police-b", "worker-b1"):
        h = login(client, who)
        for path in (f"{URL}/{sha}", f"{URL}/{sha}/thumb", f"{URL}/{sha}/display"):
            r = client.get(path, headers=h)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (who, path)
    assert client.get(f"{URL}/{sha}").status_code == 401
    assert client.get(f"{URL}/nonsense/thumb", headers=login(client, "office-a")).status_code == 404


def test_uploader_sees_own_unreferenced_photo_others_do_not(client, worker, png_image):
    sha = sha256_hex(png_image)
    put(client, worker, png_image)
    assert client.get(f"{URL}/{sha}", headers=worker).status_code == 200
    assert client.get(f"{URL}/{sha}", headers=login(client, "worker-a2")).status_code == 404
    assert client.get(f"{URL}/{sha}", headers=login(client, "office-a")).status_code == 404


def test_photo_still_on_the_phone_is_404_pending_for_those_who_see_the_record(client, town_a_hazard, png_image):
    sha = sha256_hex(png_image)
    town_a_hazard([sha])
    r = client.get(f"{URL}/{sha}/thumb", headers=login(client, "office-a"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "photo_pending"
    r = client.get(f"{URL}/{sha}/thumb", headers=login(client, "office-b"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_thumb_and_display_have_no_metadata_and_are_upright(client, worker, town_a_hazard, exif_jpeg, root):
    sha = sha256_hex(exif_jpeg)
    put(client, worker, exif_jpeg)
    town_a_hazard([sha])
    office = login(client, "office-a")
    for kind in ("thumb", "display"):
        r = client.get(f"{URL}/{sha}/{kind}", headers=office)
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert b"SecretCam" not in r.content and b"Exif" not in r.content and b"xpacket" not in r.content
        with Image.open(io.BytesIO(r.content)) as im:
            assert im.format == "JPEG"
            assert len(im.getexif()) == 0 and "icc_profile" not in im.info and "xmp" not in im.info
            im = im.convert("RGB")
            assert im.size == (40, 80)  # stored 80x40 with orientation 6: shown portrait
            top, bottom = im.getpixel((20, 10)), im.getpixel((20, 70))
            assert top[0] > 150 and top[2] < 100, top  # the red left half turned to the top
            assert bottom[2] > 150 and bottom[0] < 100, bottom
        assert (root / "derivatives" / service.derivative_name(kind) / sha[:2] / sha[2:4] / sha).is_file()  # cached for next time
    # served again from the cache, same bytes
    assert client.get(f"{URL}/{sha}/thumb", headers=office).content == client.get(f"{URL}/{sha}/thumb", headers=office).content


def test_caching_headers_etag_and_304(client, worker, png_image):
    sha = sha256_hex(png_image)
    put(client, worker, png_image)
    r = client.get(f"{URL}/{sha}", headers=worker)
    assert r.headers["etag"] == f'"{sha}"'
    assert r.headers["cache-control"] == "private, max-age=31536000, immutable"
    assert r.headers["x-content-type-options"] == "nosniff"
    for inm in (f'"{sha}"', f'W/"{sha}"', f'"x", "{sha}"', "*"):
        r304 = client.get(f"{URL}/{sha}", headers={**worker, "If-None-Match": inm})
        assert r304.status_code == 304 and r304.content == b"", inm
        assert r304.headers["etag"] == f'"{sha}"' and r304.headers["cache-control"].endswith("immutable")
    assert client.get(f"{URL}/{sha}", headers={**worker, "If-None-Match": '"other"'}).status_code == 200
    t = client.get(f"{URL}/{sha}/thumb", headers=worker)
    assert t.headers["etag"] == f'"{sha}-thumb-v{service.DERIVATIVE_VERSION}"' and t.headers["cache-control"].endswith("immutable")
    assert client.get(f"{URL}/{sha}/thumb", headers={**worker, "If-None-Match": t.headers["etag"]}).status_code == 304
    # 304 only after the permission check: no probing of what one may not see
    r = client.get(f"{URL}/{sha}", headers={**login(client, "office-b"), "If-None-Match": f'"{sha}"'})
    assert r.status_code == 404


# -- uploads cut off, and the short cut for what is already stored ---------------------------


def _asgi_put(client, path: str, headers: dict, receive_messages):
    """Drive the ASGI app directly, with a receive() the test controls (a phone losing signal)."""
    sent: list[dict] = []

    async def call():
        msgs = iter(receive_messages)

        async def receive():
            m = next(msgs)
            return m() if callable(m) else m

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "PUT", "scheme": "http",
            "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
        }
        await client.app(scope, receive, send)

    client.portal.call(call)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_upload_cut_off_midway_leaves_nothing_and_retry_succeeds(client, worker, root, session):
    data = jpeg_bytes(noisy_rgb(1600, 1200, seed=11), quality=95)
    sha = sha256_hex(data)
    third = len(data) // 3
    assert third > 600_000  # two parts exceed the 1 MB write batch: bytes really hit the temp file
    seen_midway = {}

    def lose_signal():
        seen_midway["tmp"] = len(tmp_files(root))
        seen_midway["visible"] = bool(blob_files(root, sha))
        return {"type": "http.disconnect"}

    status, _ = _asgi_put(client, f"{URL}/{sha}", {**worker, "content-length": str(len(data))}, [
        {"type": "http.request", "body": data[:third], "more_body": True},
        {"type": "http.request", "body": data[third:2 * third], "more_body": True},
        lose_signal,
    ])
    assert status == 400
    assert seen_midway == {"tmp": 1, "visible": False}  # streamed to a temp file, not under its name
    assert blob_files(root, sha) == [] and tmp_files(root) == [] and count_blobs(session, sha) == 0
    r = client.post(f"{URL}/missing", json={"sha256": [sha]}, headers=worker)
    assert r.json() == {"missing": [sha]}

    assert put(client, worker, data).status_code == 201  # the phone retries
    assert len(blob_files(root, sha)) == 1 and count_blobs(session, sha) == 1


def test_failing_stream_in_the_store_leaves_nothing(root, big_jpeg):
    store = FilesystemBlobStore(root)
    sha = sha256_hex(big_jpeg)

    def chunks():
        yield big_jpeg[:100_000]
        raise ConnectionResetError("signal lost")

    with pytest.raises(ConnectionResetError):
        store.put_stream(sha, chunks(), 10**8)
    assert not store.has(sha) and tmp_files(root) == []
    assert store.put_stream(sha, [big_jpeg], 10**8).created


def test_already_stored_answers_200_without_reading_the_body(client, worker, png_image):
    sha = sha256_hex(png_image)
    put(client, worker, png_image)

    def must_not_read():
        raise AssertionError("the body was read")

    status, body = _asgi_put(client, f"{URL}/{sha}", {**worker, "content-length": str(len(png_image))},
                             [must_not_read])
    assert status == 200 and b'"created":false' in body


def test_unauthenticated_upload_is_refused_before_the_body(client, png_image):
    def must_not_read():
        raise AssertionError("the body was read")

    status, _ = _asgi_put(client, f"{URL}/{sha256_hex(png_image)}",
                          {"authorization": f"Bearer {uid()}", "content-length": str(len(png_image))}, [must_not_read])
    assert status == 401


@pytest.mark.parametrize("how", ["logout", "expired", "device_revoked", "user_deactivated"])
def test_an_upload_is_refused_with_a_token_that_no_longer_holds(client, session, png_image, how):
    """Uploads authenticate on their own lean path: it must refuse what every other call refuses."""
    from app.auth.models import AuthToken, Device, User
    from app.db import utcnow

    h = login(client, "worker-a2", device=f"phone-{how}")
    me = client.get("/api/v1/me", headers=h).json()
    if how == "logout":
        assert client.post("/api/v1/auth/logout", headers=h).status_code == 204
    elif how == "expired":
        session.execute(sa.update(AuthToken).where(AuthToken.device_id == me["device_id"])
                        .values(expires_at=utcnow() - timedelta(seconds=1)))
    elif how == "device_revoked":
        session.execute(sa.update(Device).where(Device.id == me["device_id"]).values(revoked_at=utcnow()))
    else:
        session.execute(sa.update(User).where(User.id == me["id"]).values(is_active=False))
    session.commit()
    r = put(client, h, png_image)
    assert r.status_code == 401, r.text
    assert session.get(Blob, sha256_hex(png_image)) is None


def test_an_upload_cut_short_by_a_crash_leaves_a_temp_file_the_next_start_removes(db, settings):
    from fastapi.testclient import TestClient

    from app.main import create_app

    tmp = settings.storage_dir / "tmp"
    tmp.mkdir(parents=True)
    stale, fresh = tmp / "dead-upload.part", tmp / "live-upload.part"
    stale.write_bytes(b"half a photo")
    fresh.write_bytes(b"an upload in progress in another worker")
    hours_ago = datetime.now().timestamp() - 2 * 3600
    os.utime(stale, (hours_ago, hours_ago))
    with TestClient(create_app(settings, db)):
        assert not stale.exists()
        assert fresh.exists()


def test_a_store_that_does_not_call_on_stored_still_gets_its_row(db, exif_jpeg, tmp_path):
    import asyncio

    class QuietStore(FilesystemBlobStore):
        async def put_stream_async(self, *args, on_stored=None, **kw):
            return await super().put_stream_async(*args, **kw)  # publishes, never calls the hook

    store = QuietStore(tmp_path / "quiet")
    sha = sha256_hex(exif_jpeg)
    res = asyncio.run(service.ingest(db, store, sha, [exif_jpeg], max_bytes=10**7,
                                     uploader=service.Uploader(user_id=None, device_id="d")))
    assert res.created and res.blob.sha256 == sha
    with db.session() as s:
        assert s.get(Blob, sha) is not None
