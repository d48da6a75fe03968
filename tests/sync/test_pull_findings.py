"""Findings of a review of the pull / change feed (GET /api/v1/sync/pull): each test here failed on the code
before its fix (see the docstrings)."""

from datetime import datetime, timedelta, timezone

import pytest
from tests.conftest import login
from tests.helpers import hazard_data, op, place_of, push, uid
from tests.sync.test_pull import get_page, pull_all

NOW = datetime.now(timezone.utc)


@pytest.fixture
def c(client):
    return client


def latest(changes, entity_id):
    mine = [ch for ch in changes if ch["id"] == entity_id]
    return mine[-1] if mine else None


def ids(changes, type_=None):
    return [ch["id"] for ch in changes if type_ is None or ch["type"] == type_]


def upsert_of(place, **kw):
    return {"id": place.id, "name": place.name, "address": place.address, "grid_id": place.grid_id,
            "place_class": place.place_class, **kw}


def test_a_hazard_rerouted_by_a_reclass_later_in_the_same_push_reaches_the_phone(c, session, units):
    """A worker reports a hazard at a rental, then (same outbox, same push) corrects the premises' class to
    a level-1 key unit: the server re-routes the hazard it just created to the brigade. The push's answer for
    the report says town office (it was computed before the reclass); the pull must bring the new holder and
    tier, as it does when the hazard came in an earlier push (test_pull_review)."""
    phone = login(c, "worker-a1", device="phone-1")
    place = place_of(session, units, "grid-a-1-1", "rental")
    _, cursor, _ = pull_all(c, phone)
    hz = hazard_data(place.id, NOW - timedelta(hours=1), category="window_bars")
    res = push(c, phone, op("hazard.report", hz), op("place.upsert", upsert_of(place, place_class="key_unit_1")))
    assert [r["status"] for r in res] == ["applied", "applied"], res
    assert res[0]["result"]["tier"] == "town_office"  # what the phone was told
    got = c.get(f"/api/v1/hazards/{hz['id']}", headers=phone).json()
    assert got["tier"] == "brigade"  # what the server holds
    changes, _, _ = pull_all(c, phone, cursor)
    h = latest(changes, hz["id"])
    assert h is not None, f"the phone never hears that its hazard went to the brigade: {changes}"
    assert h["data"]["tier"] == "brigade" and h["data"]["holder_org_unit_id"] == got["holder_org_unit_id"]


def test_an_inspection_moved_by_a_place_move_later_in_the_same_push_reaches_the_phone(c, session, units):
    """The same gap for inspections: an office's phone submits an inspection, then (same push) moves the
    premises to a grid of another community. The server moves the inspection with it (its grid is the
    server's decision, as test_an_inspection_moved_by_the_devices_own_push_reaches_it_where_it_went says),
    but because the inspection was created in this push the phone never hears of its new grid."""
    office = login(c, "office-a", device="desk")
    place = place_of(session, units, "grid-a-1-1", "rental")
    _, cursor, _ = pull_all(c, office, limit=1000)
    insp = {"id": uid(), "place_id": place.id, "started_at": (NOW - timedelta(hours=2)).isoformat(),
            "finished_at": (NOW - timedelta(hours=1)).isoformat(), "checklist": [], "hazards": []}
    res = push(c, office, op("inspection.submit", insp),
               op("place.upsert", upsert_of(place, grid_id=units["grid-a-2-1"].id)))
    assert [r["status"] for r in res] == ["applied", "applied"], res
    changes, _, _ = pull_all(c, office, cursor)
    got = latest(changes, insp["id"])
    assert got is not None and got["data"]["grid_id"] == units["grid-a-2-1"].id, changes


def test_a_hazard_transferred_to_another_towns_office_arrives_with_its_premises(c, session, units):
    """A hazard passed across town lines enters the receiving office's scope: its queue and GET /hazards/{id}
    show the premises (PlaceBrief: name, address, class). The pull -- the offline desk's only read path --
    brings the hazard but never the premises it names, neither in the next pull nor in a fresh one: the
    device holds a hazard whose place_id it can never resolve (no name, no address to go to)."""
    office_a, office_b = login(c, "office-a", device="desk-a"), login(c, "office-b", device="desk-b")
    place = place_of(session, units, "grid-a-1-1", "rental")
    _, cursor, _ = pull_all(c, office_b, limit=1000)
    d = hazard_data(place.id, NOW - timedelta(hours=1), category="ebike_indoor")
    assert push(c, login(c, "worker-a1"), op("hazard.report", d))[0]["status"] == "applied"
    r = c.post(f"/api/v1/hazards/{d['id']}/actions", json={"action": "transfer", "to_unit_id": units["office-b"].id,
                                                             "reason": "属乙镇管辖"}, headers=office_a)
    assert r.status_code == 200, r.text
    shown = c.get(f"/api/v1/hazards/{d['id']}", headers=office_b).json()["place"]
    assert shown["name"] == place.name  # the API shows office B where it is

    def knows_premises(changes):
        h = latest(changes, d["id"])
        assert h is not None and not h["deleted"], changes
        brief = h["data"].get("place") or {}
        return place.id in ids(changes, "place") or brief.get("name") == place.name

    assert knows_premises(pull_all(c, office_b, cursor)[0]), "incremental pull: the hazard's premises never arrive"
    assert knows_premises(pull_all(c, office_b, limit=1000)[0]), "fresh pull: the hazard's premises never arrive"
    # premises in the caller's own scope come as records of their own, not as a brief on each hazard
    mine = latest(pull_all(c, office_a, limit=1000)[0], d["id"])
    assert mine is not None and "place" not in mine["data"] and place.id in ids(pull_all(c, office_a, limit=1000)[0], "place")


def test_a_cursor_made_for_another_device_is_not_served_as_if_it_were_this_ones(c, session, units):
    """The feed leaves out of a device's pulls the upserts that device pushed itself, so a cursor says what
    *that device* holds. It is not bound to the device: phone 2 of the same worker (or any user of the same
    unit and role) presenting phone 1's cursor gets a 200 and silently never receives the hazard phone 1
    reported. Expected: 410 (start over), as for a cursor of another scope -- or the records it lacks."""
    p1, p2 = login(c, "worker-a1", device="phone-1"), login(c, "worker-a1", device="phone-2")
    _, cursor, _ = pull_all(c, p1)
    place = place_of(session, units, "grid-a-1-1", "nine_small")
    d = hazard_data(place.id, NOW - timedelta(hours=1))
    assert push(c, p1, op("hazard.report", d))[0]["status"] == "applied"
    _, cursor, _ = pull_all(c, p1, cursor)  # phone 1 moves past its own write (left out, as it should be)
    r = c.get("/api/v1/sync/pull", params={"cursor": cursor}, headers=p2)
    assert r.status_code == 410 or d["id"] in ids(r.json()["changes"]), (
        f"phone 2 was served phone 1's cursor ({r.status_code}) and will never hold hazard {d['id']}")
    assert r.json()["error"]["code"] == "cursor_expired" and r.json()["error"]["reason"] == "other_device", r.text
    assert get_page(c, p1, cursor)["changes"] == []  # its own device goes on with it
