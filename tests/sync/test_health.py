"""Device health: the town office sees which phones went quiet, hold photos back, or run a wrong clock."""

from datetime import datetime, timedelta, timezone

from app.photos.storage import sha256_hex
from tests.conftest import login
from tests.helpers import hazard_data, op, place_of, push, report
from tests.photos.conftest import png_bytes, two_tone

CN = timezone(timedelta(hours=8))


def at(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=CN)


def test_health_shows_stale_phones_pending_photos_and_clock(clocked_client, clock, session, units):
    c = clocked_client
    clock.now = at("2026-03-02T09:00")
    quiet = login(c, "worker-a1", device="quiet-phone")
    busy = login(c, "worker-a2", device="busy-phone")
    place = place_of(session, units, "grid-a-1-1", "rental")
    # the quiet phone pushes once, naming two photos it never uploads, with its clock 2 hours fast
    r = c.post("/api/v1/sync/push", headers=quiet, json={
        "sent_at": "2026-03-02T11:00:00+08:00", "app_version": "1.4.2",
        "ops": [op("hazard.report", hazard_data(place.id, at("2026-03-02T08:00"), photos=["f" * 64, "e" * 64]))]})
    assert r.status_code == 200
    assert r.json()["clock_offset_s"] == 7200.0 and r.json()["clock_flagged"] is True
    clock.now = at("2026-03-09T09:00")  # a week later the other phone syncs
    r = c.post("/api/v1/sync/push", headers=busy, json={"sent_at": "2026-03-09T09:00:30+08:00", "ops": []})
    assert r.json()["clock_flagged"] is False

    health = c.get("/api/v1/devices/health", params={"stale_days": 3}, headers=login(c, "office-a"))
    assert health.status_code == 200
    by_name = {h["username"] for h in health.json()}
    q = next(h for h in health.json() if h["username"] == "worker-a1" and h["last_push_at"])
    b = next(h for h in health.json() if h["username"] == "worker-a2" and h["last_push_at"])
    assert q["stale"] is True and q["days_since_sync"] == 7.0 and q["pending_media"] == 2
    assert q["clock_flagged"] is True and q["app_version"] == "1.4.2"
    assert b["stale"] is False and b["pending_media"] == 0 and b["clock_offset_s"] == 30.0
    assert health.json()[0]["stale"] is True  # most worrying first
    assert "worker-b1" not in by_name  # another town's phones are not this office's business

    # the office sees, on the hazard, which photos are still on that phone
    hid = c.get("/api/v1/queue", headers=login(c, "office-a")).json()["items"][0]["id"]
    d = c.get(f"/api/v1/hazards/{hid}", headers=login(c, "office-a")).json()
    assert sorted(d["photos_pending"]) == ["e" * 64, "f" * 64]


def test_workers_cannot_see_device_health(client):
    assert client.get("/api/v1/devices/health", headers=login(client, "worker-a1")).status_code == 403


def test_a_pull_is_recorded_on_its_phone_at_most_once_a_minute(clocked_client, clock):
    """The device health shows when a phone last pulled; a phone pulling every few seconds costs a write a minute."""
    c = clocked_client
    office = login(c, "office-a")

    def last_pull() -> datetime | None:
        seen = next(h for h in c.get("/api/v1/devices/health", headers=office).json()
                    if h["username"] == "worker-a1")["last_pull_at"]
        return datetime.fromisoformat(seen) if seen else None

    phone = login(c, "worker-a1", device="puller")  # seen at login, by the real clock
    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(minutes=2)
    assert last_pull() is None
    for after, recorded in ((0, start), (30, start), (90, start + timedelta(seconds=90))):
        clock.now = start + timedelta(seconds=after)
        assert c.get("/api/v1/sync/pull", headers=phone).status_code == 200
        assert last_pull() == recorded, after  # within a minute of the last: no write


def _health(client, who: str) -> list[dict]:
    r = client.get("/api/v1/devices/health", headers=login(client, who))
    assert r.status_code == 200, r.text
    return r.json()


def test_a_town_office_sees_only_its_towns_phones(client):
    for who in ("brigade", "admin", "worker-b1", "office-b", "worker-a1"):
        login(client, who, device=f"{who}-phone")
    seen = {h["username"] for h in _health(client, "office-a")}
    assert "worker-a1" in seen
    assert not seen & {"brigade", "admin", "worker-b1", "office-b"}, seen
    assert not {h["username"] for h in _health(client, "police-a")} & {"brigade", "admin", "worker-b1"}
    county = {h["username"] for h in _health(client, "brigade")}
    assert {"worker-a1", "worker-b1", "brigade"} <= county


def _pending(client, phone: dict) -> int:
    device_id = client.get("/api/v1/me", headers=phone).json()["device_id"]
    return next(h for h in _health(client, "office-a") if h["device_id"] == device_id)["pending_media"]


def test_pending_media_counts_each_photo_a_phone_holds_once(client, session, units):
    png_image = png_bytes(two_tone(50, 30))
    worker = login(client, "worker-a1", device="two-records-phone")
    wide_shot = sha256_hex(png_image)
    place = place_of(session, units, "grid-a-1-1", "rental")
    found = datetime.now(timezone.utc) - timedelta(hours=1)
    push(client, worker, op("hazard.report", hazard_data(place.id, found, category="ebike_indoor", photos=[wide_shot])),
         op("hazard.report", hazard_data(place.id, found, category="lpg_misuse", photos=[wide_shot])))
    assert _pending(client, worker) == 1  # one photo on the phone, named twice
    assert client.put(f"/api/v1/blobs/{wide_shot}", content=png_image, headers={**worker, "Content-Type": "image/png"}).status_code == 201
    assert _pending(client, worker) == 0


def test_a_merged_hazards_photo_is_pending_on_the_phone_that_took_it_not_on_the_originals(client, session, units):
    place = place_of(session, units, "grid-a-1-1", "rental")
    found = datetime.now(timezone.utc) - timedelta(hours=1)
    original_phone = login(client, "worker-a1", device="original-phone")
    dup_phone = login(client, "worker-a1", device="dup-phone")  # the same worker's second phone
    original = report(client, original_phone, place.id, found, category="window_bars", photos=[])["hazard_id"]
    dup = report(client, dup_phone, place.id, found,
                 category="window_bars", photos=["9" * 64])["hazard_id"]
    r = client.post(f"/api/v1/hazards/{dup}/actions", json={"action": "merge", "merge_into_id": original},
                    headers=login(client, "office-a"))
    assert r.status_code == 200, r.text
    assert "9" * 64 in client.get(f"/api/v1/hazards/{original}", headers=login(client, "office-a")).json()["photos_pending"]
    assert _pending(client, dup_phone) == 1
    assert _pending(client, original_phone) == 0  # it never held that photo
