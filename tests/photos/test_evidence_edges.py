"""Photos at the edges a second review found (each test failed on the code before its fix):

1. HEAD of a photo, its thumbnail and display copy answers as GET does (it was a 405).
2. A photo whose EXIF DateTimeOriginal holds a NUL is stored, the value with a blank for it (PostgreSQL
   refused it for ever, after its file was published: the hazard showed it "on the phone" for good).
3. A photo with an odd EXIF tag type and an orientation gets its upright thumbnail and display copy (they
   were 422 for ever: ImageOps.exif_transpose re-wrote the EXIF it was about to throw away).
4. Device health counts the photos a phone attached to an action (a re-inspection recorded with
   POST /hazards/{id}/actions), as the hazard lists them on the phone.
"""
from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

from PIL import Image

from app.photos.models import Blob
from app.photos.storage import sha256_hex
from tests.conftest import login
from tests.helpers import place_of, report
from tests.photos.conftest import exif_block, jpeg_bytes, two_tone

URL = "/api/v1/blobs"


def _ago(hours: float = 1) -> datetime:
    return datetime.now(timezone.utc) - timedelta(hours=hours)


def put(client, headers, data: bytes, name: str | None = None, ctype: str = "image/jpeg"):
    return client.put(f"{URL}/{name or sha256_hex(data)}", content=data, headers={**headers, "Content-Type": ctype})


def _hazard(client, session, units, who: dict, photos: list[str]) -> str:
    place = place_of(session, units, "grid-a-1-1", "rental")
    return report(client, who, place.id, _ago(), photos=photos)["hazard_id"]


# -- 1. HEAD ------------------------------------------------------------------------------------


def test_head_of_a_photo_and_its_derivatives_answers_as_get_does(client, session, units):
    """RFC 9110 §9.3.2: a server MUST support HEAD wherever it supports GET; caches and download managers
    probe with it. Now 405 for all three paths (app/photos/router.py:150,170,176: @router.get only)."""
    data = jpeg_bytes(two_tone(80, 40))
    sha = sha256_hex(data)
    a1 = login(client, "worker-a1")
    assert put(client, a1, data).status_code == 201
    _hazard(client, session, units, a1, [sha])
    office = login(client, "office-a")
    for path in (f"{URL}/{sha}", f"{URL}/{sha}/thumb", f"{URL}/{sha}/display"):
        got = client.get(path, headers=office)
        head = client.head(path, headers=office)
        assert head.status_code == 200, (path, head.status_code, head.text)
        assert head.content == b""
        assert head.headers["etag"] == got.headers["etag"]
        assert head.headers["cache-control"] == got.headers["cache-control"]
        assert client.head(path, headers={**office, "If-None-Match": got.headers["etag"]}).status_code == 304
        # and no more to a stranger than GET tells them
        assert client.head(path, headers=login(client, "office-b")).status_code == 404


# -- 2. a NUL in the EXIF capture time -----------------------------------------------------------


def test_a_photo_whose_exif_capture_time_holds_a_nul_is_stored(client, session, units, settings):
    """imaging._read_exif strips NULs only at the ends of DateTimeOriginal; service._record_blob
    (app/photos/service.py:333-345) inserts it as it is, and PostgreSQL refuses a NUL in text: 422
    validation_error on every retry, the file already linked under its name with no row. EXIF is device
    data, best effort: a bad capture time must cost the field, never the photo."""
    exif = exif_block(6)
    exif.get_ifd(0x8769)[0x9003] = "2024:05:17\x0009:30:00"
    data = jpeg_bytes(two_tone(80, 40), exif=exif.tobytes())
    sha = sha256_hex(data)
    a1 = login(client, "worker-a1")
    hid = _hazard(client, session, units, a1, [sha])
    r = put(client, a1, data)
    assert r.status_code == 201, r.text
    assert "\x00" not in (r.json()["exif_datetime"] or "")
    assert put(client, a1, data).status_code == 200  # the retry after a lost answer
    session.expire_all()
    assert session.get(Blob, sha) is not None
    assert client.get(f"/api/v1/hazards/{hid}", headers=login(client, "office-a")).json()["photos_pending"] == []


# -- 3. derivatives of a photo with odd EXIF --------------------------------------------------------


def _odd_gps_type_jpeg() -> bytes:
    """The fixture's EXIF (orientation 6, GPS...) with GPSLongitude (tag 4, 3 RATIONALs) renumbered to
    GPSMapDatum (tag 18, which Pillow writes as ASCII): a phone writing a GPS tag of an unexpected type."""
    raw = exif_block(6).tobytes()
    entry = b"\x00\x04\x00\x05\x00\x00\x00\x03"  # big-endian: tag 4, type RATIONAL, count 3
    assert raw.count(entry) == 1
    i = raw.find(entry)
    return jpeg_bytes(two_tone(80, 40), exif=raw[:i] + b"\x00\x12" + raw[i + 2:])


def test_a_photo_with_an_odd_exif_tag_type_still_gets_its_upright_thumbnail(client, session, units):
    """Accepted at upload (its EXIF is best effort), then GET …/thumb and …/display are 422 corrupt_image for
    ever: imaging.make_derivative (app/photos/imaging.py:425) calls ImageOps.exif_transpose, which rewrites
    info["exif"] with Exif.tobytes() and fails on a tag whose value does not fit its type. The derivative
    keeps no metadata anyway: the orientation is all it needs."""
    data = _odd_gps_type_jpeg()
    sha = sha256_hex(data)
    a1 = login(client, "worker-a1")
    up = put(client, a1, data)
    assert up.status_code == 201, up.text
    assert up.json()["orientation"] == 6
    _hazard(client, session, units, a1, [sha])
    office = login(client, "office-a")
    assert client.get(f"{URL}/{sha}", headers=office).status_code == 200
    for kind in ("thumb", "display"):
        r = client.get(f"{URL}/{sha}/{kind}", headers=office)
        assert r.status_code == 200, (kind, r.text)
        im = Image.open(io.BytesIO(r.content))
        assert im.size == (40, 80)  # orientation 6 applied
        assert not im.getexif()


# -- 4. device health and photos attached to a desk action ---------------------------------------


def test_device_health_counts_photos_a_phone_attached_to_an_action(client, session, units):
    """A grid worker may record a re-inspection on any hazard of their grid through POST /hazards/{id}/actions
    (hazards/service.py:66). Its photos become refs of kind "action" (hazards/router.py:69), listed on the
    hazard as still on the phone, but sync/health.py:_pending_media_by_device counts only kinds "hazard" and
    "reinspection": the phone shows 0 photos held back. (The hazard was even closed on that evidence.)
    The action's event carries the device (hazard_events.device_id), keyed by record_id "<hazard>:<seq>"."""
    a1 = login(client, "worker-a1", device="reinspect-phone")
    hid = _hazard(client, session, units, a1, [])
    office = login(client, "office-a", device="desk")
    assert client.post(f"/api/v1/hazards/{hid}/actions", json={"action": "accept"}, headers=office).status_code == 200
    photo = jpeg_bytes(two_tone(64, 32), quality=91)
    sha = sha256_hex(photo)
    r = client.post(f"/api/v1/hazards/{hid}/actions",
                    json={"action": "record_reinspection", "rectified": True, "photos": [sha]}, headers=a1)
    assert r.status_code == 200, r.text
    assert client.get(f"/api/v1/hazards/{hid}", headers=office).json()["photos_pending"] == [sha]

    def pending() -> int:
        h = client.get("/api/v1/devices/health", params={"stale_days": 3}, headers=office)
        assert h.status_code == 200, h.text
        return sum(d["pending_media"] for d in h.json() if d["username"] == "worker-a1")

    assert pending() == 1
    assert put(client, a1, photo).status_code == 201
    assert client.get(f"/api/v1/hazards/{hid}", headers=office).json()["photos_pending"] == []
    assert pending() == 0
