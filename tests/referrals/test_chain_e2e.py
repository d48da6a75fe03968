"""A hazard's whole life: report -> town office -> overdue -> police station -> brigade -> rectification ->
re-inspection with photo -> closed, the sweep driven by an explicit `now`, every clock and the audit chain checked."""

from datetime import datetime, timedelta, timezone

import pytest
from sqlmodel import select

from app.audit.chain import ChainProblem
from app.audit.service import verify_all
from app.hazards.models import Hazard
from app.referrals.policy import load_policy
from app.referrals.service import Rules, load_calendar, sweep
from tests.conftest import login
from tests.helpers import hazard_data, op, place_of, push, uid

UTC = timezone.utc
CN = timezone(timedelta(hours=8))


def at(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=CN)


def run_sweep(session, now):
    return sweep(session, Rules(load_policy(), load_calendar(session)), now)


def test_report_to_closure_through_every_tier(clocked_client, clock, session, units):
    c = clocked_client
    worker = login(c, "worker-a1")
    place = place_of(session, units, "grid-a-1-1", "nine_small")

    # Monday 2026-03-02 09:00: the worker's inspection with one hazard reaches the server
    clock.now = at("2026-03-02T09:00")
    hz = hazard_data(place.id, at("2026-03-02T08:40"), category="ebike_indoor")
    [res] = push(c, worker, op("inspection.submit", {
        "id": uid(), "place_id": place.id, "started_at": "2026-03-02T08:30:00+08:00",
        "finished_at": "2026-03-02T08:50:00+08:00", "lat": 29.35, "lon": 105.92,
        "checklist": [{"item": "ebike_indoor", "result": "fail", "note": "楼道充电"}], "hazards": [hz]}))
    assert res["status"] == "applied"
    routed = res["result"]["hazards"][0]
    assert routed["tier"] == "town_office" and routed["holder_org_unit_id"] == units["office-a"].id
    assert routed["rule"] == "town-office-default"

    office = login(c, "office-a")
    d = c.get(f"/api/v1/hazards/{hz['id']}", headers=office).json()
    assert d["status"] == "referred"
    assert d["clocks"] == {"ack": {"due": "2026-03-03T16:00:00Z", "overdue": False}}  # end of Tuesday, China time
    assert d["routing"]["rule"] == "town-office-default" and d["routing"]["policy_version"]

    # Tuesday noon: not yet overdue, the sweep leaves it alone
    assert run_sweep(session, at("2026-03-03T12:00")) == []

    # Wednesday: the office never reported in -> police station, clocks restarted
    clock.now = at("2026-03-04T09:00")
    [esc] = run_sweep(session, clock.now)
    assert (esc.from_tier, esc.to_tier, esc.clocks) == ("town_office", "police_station", ("ack",))
    assert run_sweep(session, clock.now) == []  # idempotent
    d = c.get(f"/api/v1/hazards/{hz['id']}", headers=office).json()  # office still sees it (its town, and cc)
    assert d["tier"] == "police_station" and d["holder_org_unit_id"] == units["police-a"].id
    assert d["clocks"] == {"ack": {"due": "2026-03-05T16:00:00Z", "overdue": False}}
    assert units["office-a"].id in d["cc_org_unit_ids"]

    # Friday: the police station did not report in either -> brigade
    clock.now = at("2026-03-06T09:00")
    [esc] = run_sweep(session, clock.now)
    assert (esc.from_tier, esc.to_tier) == ("police_station", "brigade")
    brigade = login(c, "brigade")
    d = c.get(f"/api/v1/hazards/{hz['id']}", headers=brigade).json()
    assert d["holder_org_unit_id"] == units["brigade"].id
    assert d["clocks"] == {"ack": {"due": "2026-03-09T16:00:00Z", "overdue": False}}  # over the weekend
    # dismissing is the town office's sign-off, so the brigade is not offered it
    assert d["allowed_actions"] == ["accept", "escalate", "merge", "return", "transfer"]

    # the police station may see it but not act on it any more
    r = c.post(f"/api/v1/hazards/{hz['id']}/actions", json={"action": "accept"}, headers=login(c, "police-a"))
    assert r.status_code == 403

    # Monday 03-09: the brigade reports in and orders rectification by Friday 03-20
    clock.now = at("2026-03-09T10:00")
    d = c.post(f"/api/v1/hazards/{hz['id']}/actions", json={"action": "accept"}, headers=brigade).json()
    assert d["status"] == "accepted"
    assert d["clocks"] == {"order": {"due": "2026-03-12T16:00:00Z", "overdue": False}}
    d = c.post(f"/api/v1/hazards/{hz['id']}/actions",
               json={"action": "order_rectification", "deadline": "2026-03-20T18:00:00+08:00"}, headers=brigade).json()
    assert d["status"] == "rectifying"
    assert d["clocks"] == {"rectify": {"due": "2026-03-20T10:00:00Z", "overdue": False},
                           "reinspect": {"due": "2026-03-25T16:00:00Z", "overdue": False}}
    assert d["deadline"] == "2026-03-20T10:00:00Z"

    # the deadline is the owner's: nothing escalates while the holder's re-inspection clock runs
    assert run_sweep(session, at("2026-03-23T09:00")) == []

    # Monday 03-23: the worker re-inspects, fixed, with a photo -> closed out
    clock.now = at("2026-03-23T10:00")
    [res] = push(c, worker, op("hazard.reinspect", {"id": uid(), "hazard_id": hz["id"], "rectified": True,
                                                     "note": "已移至室外充电区", "at": "2026-03-23T09:40:00+08:00",
                                                     "photos": ["b" * 64]}))
    assert res["status"] == "applied" and res["result"]["outcome"] == "applied"
    d = c.get(f"/api/v1/hazards/{hz['id']}", headers=brigade).json()
    assert d["status"] == "closed" and d["clocks"] == {} and d["deadline"] is None
    assert d["deadline_met"] is False  # closed after the 03-20 deadline: counts against the clearance rate
    assert [(h["tier"], h["via"], h["outcome"]) for h in d["referrals"]] == [
        ("town_office", "route", "escalated"), ("police_station", "escalate", "escalated"), ("brigade", "escalate", "closed")]
    kinds = [e["kind"] for e in d["timeline"]]
    assert kinds == ["reported", "routed", "escalated", "escalated", "accept", "order_rectification", "record_reinspection"]
    esc_event = d["timeline"][2]
    assert esc_event["data"]["overdue_clocks"] == ["ack"] and esc_event["actor_user_id"] is None
    assert d["timeline"][0]["device_time"] == "2026-03-02T00:40:00Z"
    assert [e["seq"] for e in d["timeline"]] == list(range(1, 8))

    results = list(verify_all(session))
    assert results[-1] >= 1 and not [p for p in results if isinstance(p, ChainProblem)]

    # an edit to history is detected
    h = session.exec(select(Hazard).where(Hazard.id == hz["id"])).one()
    from app.audit.models import HazardEvent
    ev = session.exec(select(HazardEvent).where(HazardEvent.hazard_id == h.id, HazardEvent.seq == 3)).one()
    ev.data = {**ev.data, "overdue_clocks": []}
    session.add(ev)
    session.flush()
    problems = [p for p in verify_all(session) if isinstance(p, ChainProblem)]
    assert [(p.hazard_id, p.seq) for p in problems] == [(h.id, 3)]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_server_sweeps_by_itself(backend, tmp_path):
    """The in-process sweep (FIREGRID_SWEEP_INTERVAL_SECONDS) escalates without anyone running the CLI.
    A real database: the sweep runs on its own connections, beside the requests."""
    import time

    from fastapi.testclient import TestClient

    from app import migrate
    from app.config import Settings
    from app.db import Database, make_engine
    from app.demo import seed_demo
    from app.main import create_app
    from app.places.models import Place
    from tests.conftest import FakeClock, fresh_database_url

    url, cleanup = fresh_database_url(backend, tmp_path)
    migrate.upgrade(url)
    db = Database(make_engine(url))
    try:
        with db.session(write=True) as s:
            seed_demo(s, with_hazards=False)
            s.commit()
            place_id = s.exec(select(Place.id).where(Place.place_class == "rental").order_by(Place.name)).first()
        clock = FakeClock(at("2026-03-02T09:00"))
        settings = Settings(database_url=url, storage_dir=tmp_path / "blobs", secret_key="t" * 40,
                            sweep_interval_seconds=1)
        with TestClient(create_app(settings, db, clock=clock)) as c:
            office = login(c, "office-a")
            worker = login(c, "worker-a1")
            allowed = {p["id"] for p in c.get("/api/v1/places", params={"limit": 200}, headers=worker).json()["items"]}
            place_id = place_id if place_id in allowed else sorted(allowed)[0]
            hz = hazard_data(place_id, at("2026-03-02T08:00"))
            [res] = push(c, worker, op("hazard.report", hz))
            assert res["result"]["tier"] == "town_office"
            clock.now = at("2026-03-04T09:00")  # the office's acknowledgement clock ran out yesterday
            tier = None
            for _ in range(100):  # bounded wait for the next sweep (every second)
                tier = c.get(f"/api/v1/hazards/{hz['id']}", headers=office).json()["tier"]
                if tier == "police_station":
                    break
                time.sleep(0.1)
            assert tier == "police_station"
    finally:
        db.engine.dispose()
        cleanup()
