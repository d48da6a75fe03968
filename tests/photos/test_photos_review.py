"""Review of photos: what a derivative may carry, which complete photos an upload must take, and who
learns a photo's evidence or keeps seeing it."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

import pytest
from PIL import Image

from app.photos.imaging import ImageRejected, inspect_image, make_derivative
from app.photos.storage import sha256_hex
from tests.conftest import login
from tests.helpers import place_of, report
from tests.photos.conftest import EXIF_DATETIME, exif_block, jpeg_bytes, noisy_rgb, two_tone

URL = "/api/v1/blobs"
SECRET = b"owner 13800138000, 31.2401N 121.4876E"
# what a motion photo (Xiaomi, Huawei, Samsung, Pixel) carries after the picture's end marker: a short video
MOTION_TRAILER = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(range(256)) * 40


def put(client, headers, data: bytes):
    return client.put(f"{URL}/{sha256_hex(data)}", content=data, headers={**headers, "Content-Type": "image/jpeg"})


def _hazard_with(client, session, units, worker, grid: str, photos: list[str]) -> str:
    place = place_of(session, units, grid, "rental")
    res = report(client, worker, place.id, datetime.now(timezone.utc) - timedelta(hours=1), photos=photos)
    return res["hazard_id"]


# -- derivatives carry no metadata ------------------------------------------------------------


def test_a_derivative_drops_the_jpeg_comment(client, session, units):
    """Pillow writes the source's COM segment (im.info["comment"]) into a saved JPEG unless told not to."""
    data = jpeg_bytes(two_tone(80, 40), comment=SECRET)  # no ICC profile: the pixels pass through unconverted
    worker = login(client, "worker-a1")
    assert put(client, worker, data).status_code == 201
    _hazard_with(client, session, units, worker, "grid-a-1-1", [sha256_hex(data)])
    office = login(client, "office-a")
    for kind in ("thumb", "display"):
        r = client.get(f"{URL}/{sha256_hex(data)}/{kind}", headers=office)
        assert r.status_code == 200, r.text
        assert SECRET not in r.content, kind
        with Image.open(io.BytesIO(r.content)) as im:
            assert "comment" not in im.info, kind


def test_a_derivative_cached_by_an_older_version_is_made_again(client, session, units):
    """Thumbnails cached before the comment was dropped still carry it: the cache and the ETag name the
    version that made a derivative, so those are neither served nor kept by a phone revalidating."""
    data = jpeg_bytes(two_tone(80, 40), comment=SECRET)
    sha = sha256_hex(data)
    worker = login(client, "worker-a1")
    assert put(client, worker, data).status_code == 201
    _hazard_with(client, session, units, worker, "grid-a-1-1", [sha])
    stale = jpeg_bytes(two_tone(8, 4), comment=SECRET)
    client.app.state.blob_store.put_derivative(sha, "thumb", stale)  # where the version before cached it
    r = client.get(f"{URL}/{sha}/thumb", headers={**worker, "If-None-Match": f'"{sha}-thumb"'})
    assert r.status_code == 200 and r.content != stale and SECRET not in r.content
    assert r.headers["etag"] != f'"{sha}-thumb"'


@pytest.mark.parametrize("source", ["jpeg", "webp"])
def test_the_pure_derivative_keeps_none_of_the_sources_metadata(source):
    im = two_tone(80, 40)
    buf = io.BytesIO()
    if source == "jpeg":
        im.save(buf, "JPEG", comment=SECRET, exif=exif_block(3).tobytes(), xmp=b"<x:xmpmeta>" + SECRET + b"</x:xmpmeta>")
    else:
        im.save(buf, "WEBP", exif=exif_block(3).tobytes(), xmp=b"<x:xmpmeta>" + SECRET + b"</x:xmpmeta>")
    out = make_derivative(buf.getvalue(), 320)
    assert SECRET not in out and b"Exif" not in out and b"xmpmeta" not in out
    with Image.open(io.BytesIO(out)) as got:
        assert not {"comment", "exif", "xmp", "icc_profile"} & set(got.info)


# -- complete photos with data after the picture ----------------------------------------------


def test_a_motion_photo_with_a_video_after_its_end_marker_is_accepted(client, session, units, tmp_path):
    data = jpeg_bytes(two_tone(80, 40), exif=exif_block(6).tobytes()) + MOTION_TRAILER
    worker = login(client, "worker-a1")
    r = put(client, worker, data)
    assert r.status_code == 201, r.text
    assert (r.json()["mime"], r.json()["orientation"], r.json()["exif_datetime"]) == ("image/jpeg", 6, EXIF_DATETIME)
    _hazard_with(client, session, units, worker, "grid-a-1-1", [sha256_hex(data)])
    thumb = client.get(f"{URL}/{sha256_hex(data)}/thumb", headers=login(client, "office-a"))
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).size == (40, 80)


@pytest.mark.parametrize("progressive", [False, True])
def test_a_truncated_jpeg_followed_by_other_bytes_is_still_refused(tmp_path, progressive):
    whole = jpeg_bytes(noisy_rgb(400, 300), quality=90, progressive=progressive)
    p = tmp_path / "cut.jpg"
    p.write_bytes(whole[: int(len(whole) * 0.6)] + MOTION_TRAILER)
    with pytest.raises(ImageRejected) as exc:
        inspect_image(p)
    assert exc.value.code == "truncated_image"


# -- a photo's evidence, and who sees the photo ------------------------------------------------


def test_a_stored_photo_tells_another_uploader_nothing_of_its_evidence(client, session, units, exif_jpeg):
    """An upload of a stored photo by one who may see it answers 200 without reading the body; one who may
    not must send the bytes (tests/photos/test_possession.py). Neither answer hands out where and when the
    photo was taken: only its uploader gets that back."""
    sha = sha256_hex(exif_jpeg)
    a1 = login(client, "worker-a1")
    assert put(client, a1, exif_jpeg).status_code == 201
    _hazard_with(client, session, units, a1, "grid-a-1-1", [sha])
    stranger = client.put(f"{URL}/{sha}", content=b"", headers=login(client, "worker-b1"))
    assert (stranger.status_code, stranger.json()["error"]["code"]) == (422, "hash_mismatch"), stranger.text
    seer = client.put(f"{URL}/{sha}", content=b"", headers=login(client, "office-a"))
    assert seer.status_code == 200, seer.text
    body = seer.json()
    assert body["sha256"] == sha and body["created"] is False
    assert (body["gps_lat"], body["gps_lon"], body["exif_datetime"]) == (None, None, None)
    # the phone that took it, re-sending after a lost answer, still gets its evidence back
    again = put(client, a1, exif_jpeg).json()
    assert again["gps_lat"] is not None and again["exif_datetime"] == EXIF_DATETIME


def test_the_uploader_stops_seeing_a_photo_whose_record_moved_out_of_their_grid(client, session, units, exif_jpeg):
    sha = sha256_hex(exif_jpeg)
    a1 = login(client, "worker-a1")
    assert put(client, a1, exif_jpeg).status_code == 201
    hid = _hazard_with(client, session, units, a1, "grid-a-1-1", [sha])
    place_id = place_of(session, units, "grid-a-1-1", "rental").id
    moved = client.patch(f"/api/v1/places/{place_id}", json={"grid_id": units["grid-b-1-1"].id},
                         headers=login(client, "admin", device="desk"))
    assert moved.status_code == 200, moved.text
    assert client.get(f"/api/v1/hazards/{hid}", headers=a1).status_code == 404  # the record is town B's now
    for path in (f"{URL}/{sha}", f"{URL}/{sha}/thumb", f"{URL}/{sha}/display"):
        assert client.get(path, headers=a1).status_code == 404, path
        assert client.get(path, headers=login(client, "office-a")).status_code == 404, path
        assert client.get(path, headers=login(client, "office-b")).status_code == 200, path


@pytest.mark.parametrize("body", [
    b"\xff\xda\x00\x02" + b"\xff\x00" * 1_000_000,  # a scan of stuffed bytes that never ends
    b"\xff\xda\x00\x02" + b"\xff" * 2_000_000,  # a scan of fill bytes
    b"\xff\xe0\x00\x02" * 500_000 + b"\xff\xd9",  # half a million empty segments before an EOI
    b"\xff" * 2_000_000 + b"\xff\xd9",  # fill bytes before an EOI
])
def test_a_crafted_jpeg_body_has_no_end_that_can_be_told(body):
    """What the walk for a motion photo's picture end does with bodies no camera writes: no end (so the
    upload is refused as cut short), reached by a search in C or a bounded number of markers."""
    from app.photos.imaging import _jpeg_eoi

    assert _jpeg_eoi(b"\xff\xd8" + body) is None


def test_the_picture_end_is_found_past_restart_markers_and_fill_bytes():
    from app.photos.imaging import _jpeg_eoi

    scan = b"\x12\xff\x00\x34\xff\xd0\x56\xff\xd1\x78"  # stuffed byte, restart markers
    body = b"\xff\xd8" + b"\xff\xe0\x00\x04ab" + b"\xff\xda\x00\x03c" + scan + b"\xff\xff\xff\xd9" + b"video"
    assert _jpeg_eoi(body) == len(body) - len(b"\xff\xd9video")
