"""Device health: the town office sees which phones went quiet, hold photos back, or run a wrong clock."""

from datetime import datetime, timedelta, timezone

from tests.conftest import login
from tests.helpers import hazard_data, op, place_of

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
