"""GET /api/v1/sync/pull on both backends: the whole scope and only it, incremental changes since a
cursor, bounded pages, no echo of a device's own writes, tombstones for what left the scope, 410 for a
cursor the server cannot serve, and a pull that stops at the bound fixed on its first page."""

import base64
import json
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlmodel import select

from app.auth.models import Device
from app.db import insert_rows
from app.hazards.models import Hazard
from app.inspections.models import Inspection
from app.places.models import PLACE_CLASS_NAMES, Place
from app.referrals.policy import load_policy
from app.sync import feed
from app.sync.feed import Change, prune_changes
from tests.conftest import login
from tests.helpers import hazard_data, op, place_of, push, statements_on, uid

NOW = datetime.now(timezone.utc)


@pytest.fixture
def c(client):
    return client


def get_page(c, headers, cursor=None, limit=None, status=200):
    params = {}
    if cursor is not None:
        params["cursor"] = cursor
    if limit is not None:
        params["limit"] = limit
    r = c.get("/api/v1/sync/pull", params=params, headers=headers)
    assert r.status_code == status, r.text
    return r.json()


def pull_all(c, headers, cursor=None, limit=None):
    """Follow a pull to its end: (changes, resting cursor, pages)."""
    changes, pages = [], 0
    while True:
        page = get_page(c, headers, cursor, limit)
        pages += 1
        changes += page["changes"]
        cursor = page["cursor"]
        if not page["more"]:
            return changes, cursor, pages
        assert pages < 1000


def ids(changes, type_=None, deleted=None):
    return [ch["id"] for ch in changes if (type_ is None or ch["type"] == type_)
            and (deleted is None or ch["deleted"] == deleted)]


def report(c, headers, place_id, **kw):
    data = hazard_data(place_id, NOW - timedelta(hours=1), **kw)
    [res] = push(c, headers, op("hazard.report", data))
    assert res["status"] == "applied", res
    return data["id"]


def test_initial_pull_is_the_whole_scope_and_only_it(c, session, units):
    w = login(c, "worker-a1", device="phone-1")
    grid = units["grid-a-1-1"].id
    changes, cursor, _ = pull_all(c, w)
    mine = set(session.exec(select(Place.id).where(Place.grid_id == grid)).all())
    assert mine and Counter(ids(changes, "place")) == Counter(mine)
    hazards = set(session.exec(select(Hazard.id).where(Hazard.grid_id == grid, Hazard.status != "merged")).all())
    assert Counter(ids(changes, "hazard")) == Counter(hazards)
    for ch in changes:
        if ch["type"] in ("place", "hazard"):
            assert ch["data"]["grid_id"] == grid and not ch["deleted"]
    h = next((ch["data"] for ch in changes if ch["type"] == "hazard"), None)
    if h is not None:  # the holder and the clocks travel with the hazard
        assert {"status", "holder_org_unit_id", "next_due", "ack_due", "rectify_due", "reinspect_due"} <= set(h)

    policy = load_policy()
    assert set(ids(changes, "category")) == {cat.code for cat in policy.categories}
    assert set(ids(changes, "place_class")) == {pc.value for pc in PLACE_CLASS_NAMES}
    [template] = [ch for ch in changes if ch["type"] == "checklist_template"]
    assert template["id"] == "default"
    assert [i["item"] for i in template["data"]["items"]] == [cat.code for cat in policy.categories]

    # the same snapshot in small pages: every record exactly once
    small, _, pages = pull_all(c, w, limit=7)
    assert pages > 3
    assert Counter((ch["type"], ch["id"]) for ch in small) == Counter((ch["type"], ch["id"]) for ch in changes)

    # nothing happened since: the next pull is empty
    again, _, _ = pull_all(c, w, cursor)
    assert again == []


def test_a_town_office_pulls_its_town(c, session, units):
    changes, _, _ = pull_all(c, login(c, "office-a"), limit=1000)
    town = units["town-a"].id
    assert Counter(ids(changes, "place")) == Counter(session.exec(select(Place.id).where(Place.town_id == town)).all())


def test_incremental_pull_returns_only_what_changed_in_scope(c, session, units):
    d1, d2 = login(c, "worker-a1", device="phone-1"), login(c, "worker-a1", device="phone-2")
    _, cursor, _ = pull_all(c, d1)
    place = place_of(session, units, "grid-a-1-1", "nine_small")
    hid = report(c, d2, place.id, category="blocked_exit")
    report(c, login(c, "worker-b1"), place_of(session, units, "grid-b-1-1", "rental").id)  # another town
    changes, cursor, _ = pull_all(c, d1, cursor)
    assert [(ch["type"], ch["id"], ch["deleted"]) for ch in changes] == [("hazard", hid, False)]
    data = changes[0]["data"]
    assert data["status"] == "referred" and data["holder_org_unit_id"] == units["office-a"].id
    assert data["ack_due"] and data["place_id"] == place.id
    assert pull_all(c, d1, cursor)[0] == []


def test_paging_with_a_small_limit_visits_every_change_once(c, session, units):
    d1, d2 = login(c, "worker-a1", device="phone-1"), login(c, "worker-a1", device="phone-2")
    _, cursor, _ = pull_all(c, d1)
    place = place_of(session, units, "grid-a-1-1", "nine_small")
    made = [report(c, d2, place.id, category=cat) for cat in
            ("blocked_exit", "ebike_indoor", "lpg_misuse", "window_bars", "improvised_wiring")]
    seen, pages = [], []
    while True:
        page = get_page(c, d1, cursor, limit=2)
        assert len(page["changes"]) <= 2
        seen += ids(page["changes"])
        pages.append(page["more"])
        cursor = page["cursor"]
        if not page["more"]:
            break
    assert Counter(seen) == Counter(made)
    assert pages == [True, True, False]


def test_a_devices_own_writes_are_not_echoed_but_later_server_changes_are(c, session, units):
    d1, d2 = login(c, "worker-a1", device="phone-1"), login(c, "worker-a1", device="phone-2")
    _, c1, _ = pull_all(c, d1)
    _, c2, _ = pull_all(c, d2)
    place = place_of(session, units, "grid-a-1-1", "nine_small")
    hid = report(c, d1, place.id, category="blocked_exit")
    changes, c1, _ = pull_all(c, d1, c1)
    assert hid not in ids(changes)  # phone 1 made it
    changes, c2, _ = pull_all(c, d2, c2)
    assert ids(changes) == [hid]  # the same worker's other phone did not
    # the town office acts on it: a server-side change after the device's write reaches the device
    r = c.post(f"/api/v1/hazards/{hid}/actions", json={"action": "accept"}, headers=login(c, "office-a"))
    assert r.status_code == 200, r.text
    changes, c1, _ = pull_all(c, d1, c1)
    assert [(ch["id"], ch["data"]["status"]) for ch in changes] == [(hid, "accepted")]


def test_a_place_moved_to_another_grid_is_a_tombstone_there_and_an_upsert_here(c, session, units):
    a1, a2, office = login(c, "worker-a1"), login(c, "worker-a2"), login(c, "office-a", device="desk")
    place = place_of(session, units, "grid-a-1-1", "rental")
    first, a1_cursor, _ = pull_all(c, a1)
    assert place.id in ids(first, "place")
    _, a2_cursor, _ = pull_all(c, a2)
    _, office_cursor, _ = pull_all(c, office)

    r = c.patch(f"/api/v1/places/{place.id}", json={"grid_id": units["grid-a-2-1"].id}, headers=office)
    assert r.status_code == 200, r.text

    changes, _, _ = pull_all(c, a1, a1_cursor)
    assert [(ch["type"], ch["id"], ch["deleted"]) for ch in changes] == [("place", place.id, True)]
    changes, _, _ = pull_all(c, a2, a2_cursor)
    assert [(ch["type"], ch["id"], ch["deleted"]) for ch in changes] == [("place", place.id, False)]
    assert changes[0]["data"]["grid_id"] == units["grid-a-2-1"].id and changes[0]["data"]["name"] == place.name
    # the town office sees both grids: it keeps the premises, no tombstone
    changes, _, _ = pull_all(c, office, office_cursor)
    assert [(ch["id"], ch["deleted"]) for ch in changes] == [(place.id, False)]

    rows = session.exec(select(Change).where(Change.entity_id == place.id).order_by(Change.seq)).all()
    assert [(r.grid_id, r.deleted) for r in rows[-2:]] == [(units["grid-a-1-1"].id, True), (units["grid-a-2-1"].id, False)]


def test_a_moved_place_takes_its_hazards_along(c, session, units):
    a1, a2, office = login(c, "worker-a1"), login(c, "worker-a2"), login(c, "office-a", device="desk")
    place = place_of(session, units, "grid-a-1-1", "rental")
    hid = report(c, a1, place.id, category="window_bars")
    _, a1_cursor, _ = pull_all(c, a1)
    _, a2_cursor, _ = pull_all(c, a2)
    assert c.patch(f"/api/v1/places/{place.id}", json={"grid_id": units["grid-a-2-1"].id}, headers=office).status_code == 200
    changes, _, _ = pull_all(c, a1, a1_cursor)
    assert sorted((ch["type"], ch["deleted"]) for ch in changes if ch["id"] in (place.id, hid)) == [
        ("hazard", True), ("place", True)]
    changes, _, _ = pull_all(c, a2, a2_cursor)
    assert {ch["id"] for ch in changes if not ch["deleted"]} >= {place.id, hid}
    # the new grid's worker may now re-inspect it; the old one may not
    assert c.get(f"/api/v1/hazards/{hid}", headers=a2).status_code == 200
    assert c.get(f"/api/v1/hazards/{hid}", headers=a1).status_code == 404


def test_a_moved_place_takes_its_inspections_along(c, session, units):
    """Its inspection file goes with it, to another town too: the old grid's phones drop it, the new
    grid's get it (with the inspection its hazards name), and a fresh pull lists it only there."""
    a1, b1, a2 = login(c, "worker-a1"), login(c, "worker-b1"), login(c, "worker-a2")
    place = place_of(session, units, "grid-a-1-1", "rental")
    insp = {"id": uid(), "place_id": place.id, "started_at": (NOW - timedelta(hours=2)).isoformat(),
            "finished_at": (NOW - timedelta(hours=1)).isoformat(), "checklist": [],
            "hazards": [hazard_data(place.id, NOW - timedelta(hours=1), category="window_bars")]}
    [res] = push(c, a1, op("inspection.submit", insp))
    assert res["status"] == "applied", res
    _, a1_cursor, _ = pull_all(c, a1)
    _, b1_cursor, _ = pull_all(c, b1)
    r = c.patch(f"/api/v1/places/{place.id}", json={"grid_id": units["grid-b-1-1"].id}, headers=login(c, "admin"))
    assert r.status_code == 200, r.text

    changes, _, _ = pull_all(c, a1, a1_cursor)
    assert ("inspection", insp["id"], True) in {(ch["type"], ch["id"], ch["deleted"]) for ch in changes}
    changes, _, _ = pull_all(c, b1, b1_cursor)
    got = [ch for ch in changes if ch["type"] == "inspection"]
    assert [(ch["id"], ch["deleted"]) for ch in got] == [(insp["id"], False)]
    assert got[0]["data"]["grid_id"] == units["grid-b-1-1"].id
    assert insp["id"] in ids(pull_all(c, b1)[0], "inspection")
    for worker in (a1, a2):  # nor does a fresh pull of the old town list it
        assert insp["id"] not in ids(pull_all(c, worker)[0], "inspection")
    row = session.get(Inspection, insp["id"])
    session.refresh(row)
    assert (row.grid_id, row.town_id) == (units["grid-b-1-1"].id, units["grid-b-1-1"].town_id)


def test_an_inspection_moved_by_the_devices_own_push_reaches_it_where_it_went(c, session, units):
    """The device sent the premises, not its inspections' new grid: that is the server's news to it too."""
    admin = login(c, "admin", device="admin-phone")
    place = place_of(session, units, "grid-a-1-1", "rental")
    insp = {"id": uid(), "place_id": place.id, "started_at": (NOW - timedelta(hours=2)).isoformat(),
            "finished_at": (NOW - timedelta(hours=1)).isoformat(), "checklist": [], "hazards": []}
    assert push(c, login(c, "worker-a1"), op("inspection.submit", insp))[0]["status"] == "applied"
    _, cursor, _ = pull_all(c, admin, limit=1000)
    [res] = push(c, admin, op("place.upsert", {"id": place.id, "name": place.name, "address": place.address,
                                               "grid_id": units["grid-b-1-1"].id, "place_class": "rental"}))
    assert res["status"] == "applied", res
    changes, _, _ = pull_all(c, admin, cursor)
    assert place.id not in ids(changes)  # the premises itself is the device's own write
    got = [ch for ch in changes if ch["id"] == insp["id"] and not ch["deleted"]]
    assert got and got[-1]["data"]["grid_id"] == units["grid-b-1-1"].id, changes


def test_a_move_within_the_devices_own_scope_is_not_echoed_and_the_old_grid_gets_a_tombstone(c, session, units):
    office_b = login(c, "office-b", device="desk-b")
    w = login(c, "worker-b1")
    place = place_of(session, units, "grid-b-1-1", "rental")
    _, cursor, _ = pull_all(c, office_b)
    _, wc, _ = pull_all(c, w)

    def move(grid_code):
        [res] = push(c, office_b, op("place.upsert", {"id": place.id, "name": place.name, "address": place.address,
                                                      "grid_id": units[grid_code].id, "place_class": "rental"}))
        assert res["status"] == "applied", res

    move("grid-b-2-1")  # pushed by this device, to another grid of its town: no echo, no tombstone
    changes, cursor, _ = pull_all(c, office_b, cursor)
    assert changes == []
    changes, wc, _ = pull_all(c, w, wc)  # the worker of the old grid loses it
    assert [(ch["id"], ch["deleted"], ch["data"]["reason"]) for ch in changes] == [(place.id, True, "moved")]
    move("grid-b-1-1")  # and back
    changes, wc, _ = pull_all(c, w, wc)
    assert [(ch["id"], ch["deleted"]) for ch in changes] == [(place.id, False)]


def test_a_tombstone_the_device_caused_itself_still_reaches_it(session, units):
    """Echo suppression is for upserts only: a device that moved a record out of its own scope must drop it."""
    from app.auth.models import User
    from app.auth.scope import scope_for
    from app.places.models import PlaceUpdate
    from app.places.service import update_place
    from app.sync.pull import pull

    policy = load_policy()
    user = session.exec(select(User).where(User.username == "worker-a1")).one()
    scope = scope_for(session, user)
    place = place_of(session, units, "grid-a-1-1", "rental")
    page = pull(session, scope, policy, device_id="phone-x", limit=1000)
    while page.more:
        page = pull(session, scope, policy, device_id="phone-x", cursor=page.cursor, limit=1000)
    session.info[feed.ORIGIN_KEY] = "phone-x"
    update_place(session, None, place, PlaceUpdate(grid_id=units["grid-b-1-1"].id, owner_name="换了"))
    session.commit()
    session.info.pop(feed.ORIGIN_KEY)
    page = pull(session, scope, policy, device_id="phone-x", cursor=page.cursor)
    assert [(ch["id"], ch["deleted"]) for ch in page.changes] == [(place.id, True)] and not page.more


def test_a_merged_hazard_is_a_tombstone(c, session, units):
    w, other = login(c, "worker-a1", device="phone-1"), login(c, "worker-a1", device="phone-2")
    office = login(c, "office-a", device="desk")
    place = place_of(session, units, "grid-a-1-1", "nine_small")
    first = report(c, other, place.id, category="flammables_storage")
    dup = report(c, other, place.id, category="flammables_storage")
    _, cursor, _ = pull_all(c, w)
    r = c.post(f"/api/v1/hazards/{dup}/actions", json={"action": "merge", "merge_into_id": first}, headers=office)
    assert r.status_code == 200, r.text
    changes, cursor, _ = pull_all(c, w, cursor)
    by_id = {ch["id"]: ch for ch in changes}
    assert by_id[dup]["deleted"] is True and by_id[dup]["data"] == {"reason": "merged", "merged_into_id": first}
    assert by_id[first]["deleted"] is False and by_id[first]["data"]["version"] >= 2
    # and a fresh pull no longer lists it
    assert dup not in ids(pull_all(c, w)[0], "hazard")


def test_a_cursor_the_server_cannot_serve_is_410(c, session, units):
    w = login(c, "worker-a1")
    for bad in ("not-a-cursor", "e30", base64.urlsafe_b64encode(b'{"v": 99}').decode(), "%%%", "x" * 500):
        body = get_page(c, w, bad, status=410)
        assert body["error"]["code"] == "cursor_expired" and body["error"]["message"]
    _, cursor, _ = pull_all(c, w)
    # another jurisdiction's cursor
    assert get_page(c, login(c, "worker-a2"), cursor, status=410)["error"]["code"] == "cursor_expired"
    # tampered: a cursor from another feed
    d = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    forged = base64.urlsafe_b64encode(json.dumps({**d, "e": "0" * 32}).encode()).decode()
    assert get_page(c, w, forged, status=410)["error"]["code"] == "cursor_expired"

    # pruned past the cursor: 410, and a full pull starts over
    report(c, login(c, "worker-a1", device="phone-2"), place_of(session, units, "grid-a-1-1", "nine_small").id)
    newest = session.exec(select(sa.func.max(Change.seq))).one()
    assert prune_changes(session, newest + 1) > 0
    session.commit()
    assert session.exec(select(sa.func.count()).select_from(Change)).one() == 0
    body = get_page(c, w, cursor, status=410)
    assert body["error"]["code"] == "cursor_expired" and "older" in body["error"]["message"]
    _, fresh, _ = pull_all(c, w)
    assert pull_all(c, w, fresh)[0] == []  # at the low-water mark exactly is fine
    # and the feed goes on above the mark
    hid = report(c, login(c, "worker-a1", device="phone-2"), place_of(session, units, "grid-a-1-1", "nine_small").id,
                 category="blocked_exit")
    assert ids(pull_all(c, w, fresh)[0]) == [hid]


def test_asking_for_news_when_there_is_none_takes_two_statements(c, db, session, units):
    """Phones ask for news far more often than there is any: the token, then the feed's epoch, low-water
    mark and newest seq in one statement, and no change query for an empty range (bench/instructions.py)."""
    w = login(c, "worker-a1")
    _, cursor, _ = pull_all(c, w)
    with statements_on(db.connection) as statements:
        assert get_page(c, w, cursor)["changes"] == []
    assert len(statements) == 2, statements
    # and with news, it is read
    hid = report(c, login(c, "worker-a1", device="phone-2"), place_of(session, units, "grid-a-1-1", "nine_small").id)
    assert ids(get_page(c, w, cursor)["changes"]) == [hid]


def test_a_pull_stops_at_the_bound_fixed_on_its_first_page(c, session, units):
    d1, d2 = login(c, "worker-a1", device="phone-1"), login(c, "worker-a1", device="phone-2")
    _, cursor, _ = pull_all(c, d1)
    place = place_of(session, units, "grid-a-1-1", "nine_small")
    made = [report(c, d2, place.id, category=cat) for cat in ("blocked_exit", "ebike_indoor", "lpg_misuse")]
    page1 = get_page(c, d1, cursor, limit=2)
    assert ids(page1["changes"]) == made[:2] and page1["more"]
    late = report(c, d2, place.id, category="window_bars")  # lands between page 1 and page 2
    page2 = get_page(c, d1, page1["cursor"], limit=2)
    assert ids(page2["changes"]) == made[2:] and not page2["more"]
    nxt, _, _ = pull_all(c, d1, page2["cursor"], limit=2)
    assert ids(nxt) == [late]


def test_the_snapshot_bound_holds_for_a_first_pull_too(c, session, units):
    d1, d2 = login(c, "worker-a1", device="phone-1"), login(c, "worker-a1", device="phone-2")
    page = get_page(c, d1, limit=3)
    assert page["more"]
    late = report(c, d2, place_of(session, units, "grid-a-1-1", "nine_small").id, category="window_bars")
    rest, cursor, _ = pull_all(c, d1, page["cursor"], limit=50)
    # the snapshot reads current rows, so the new hazard may be in it; either way the next pull has it
    nxt, _, _ = pull_all(c, d1, cursor)
    assert ids(nxt) == [late]


def test_the_limit_is_bounded(c):
    w = login(c, "worker-a1")
    assert len(get_page(c, w, limit=1)["changes"]) == 1
    page = get_page(c, w, limit=5000)
    assert len(page["changes"]) <= 1000
    get_page(c, w, limit=0, status=422)


def test_a_pull_records_when_the_device_was_last_seen(c, session):
    w = login(c, "worker-a1", device="phone-9")
    device = session.exec(select(Device).where(Device.device_key == "phone-9")).one()
    long_ago = datetime(2026, 1, 1, tzinfo=timezone.utc)
    device.last_seen_at = long_ago
    session.add(device)
    session.commit()
    get_page(c, w, limit=1)
    session.expire_all()
    seen = session.exec(select(Device).where(Device.device_key == "phone-9")).one().last_seen_at
    assert seen is not None and seen > long_ago


def test_feed_rows_follow_savepoints_and_rollbacks(session, units):
    """A change rolled back (a rejected op's savepoint, or the whole transaction) leaves no change row."""
    grid = units["grid-a-1-1"]

    def place(**kw):
        return Place(id=uid(), name="回滚测试", address="", grid_id=grid.id, town_id=grid.town_id,
                     community_id=grid.community_id, place_class="other", **kw)

    before = session.exec(select(sa.func.max(Change.seq))).one() or 0
    kept, dropped = place(), place()
    session.add(kept)
    session.flush()
    sp = session.begin_nested()
    session.add(dropped)
    session.flush()
    sp.rollback()
    session.commit()
    rows = session.exec(select(Change).where(Change.seq > before)).all()
    assert [(r.entity_id, r.deleted) for r in rows] == [(kept.id, False)]

    session.add(place())
    session.flush()
    session.rollback()
    session.commit()
    assert session.exec(select(sa.func.count()).select_from(Change).where(Change.seq > before)).one() == 1


def inspection_row(place, grid) -> dict:
    """An inspections row as the bulk push writes it."""
    return {"id": uid(), "place_id": place.id, "grid_id": grid.id, "town_id": grid.town_id, "user_id": None,
            "device_id": None, "started_at": NOW, "finished_at": None, "lat": 29.0, "lon": 105.0,
            "checklist": [], "created_at": NOW}


def test_a_bulk_push_publishes_its_rows_exactly_as_the_database_holds_them(c, session, units):
    """The fast path publishes the rows it wrote without reading them back; what it publishes must be
    what a read-back would give."""
    worker = login(c, "worker-a1", device="bulk-phone")
    place = place_of(session, units, "grid-a-1-1", "rental")
    before = session.exec(select(sa.func.max(Change.seq))).one() or 0
    hz = [hazard_data(place.id, NOW - timedelta(hours=1), category=cat) for cat in ("ebike_indoor", "blocked_exit")]
    insp = {"id": uid(), "place_id": place.id, "started_at": (NOW - timedelta(hours=2)).isoformat(),
            "finished_at": (NOW - timedelta(hours=1)).isoformat(), "lat": 29.35, "lon": 105.92,
            "checklist": [{"item": "ebike_indoor", "result": "fail", "note": "充电"}], "hazards": hz}
    [res] = push(c, worker, op("inspection.submit", insp))
    assert res["status"] == "applied", res
    changes = session.exec(select(Change).where(Change.seq > before)).all()
    published = {(ch.entity_type, ch.entity_id): ch for ch in changes}
    assert set(published) == {("inspection", insp["id"])} | {("hazard", h["id"]) for h in hz}
    for h in hz:
        row = session.execute(sa.select(Hazard.__table__).where(Hazard.id == h["id"])).one()
        ch = published[("hazard", h["id"])]
        assert ch.data == feed.hazard_data(row) and (ch.grid_id, ch.town_id) == (row.grid_id, row.town_id)
        assert ch.holder_unit_id == row.holder_unit_id and not ch.deleted
    row = session.execute(sa.select(Inspection.__table__).where(Inspection.id == insp["id"])).one()
    assert published[("inspection", insp["id"])].data == feed.inspection_data(row)


def test_rows_written_in_bulk_follow_savepoints_and_later_changes(session, units):
    """insert_rows() in a savepoint that rolls back publishes nothing; a row changed after it was
    written is published as changed."""
    grid = units["grid-a-1-1"]
    place = place_of(session, units, "grid-a-1-1", "rental")

    before = session.exec(select(sa.func.max(Change.seq))).one() or 0
    dropped, changed, kept = (inspection_row(place, grid) for _ in range(3))
    sp = session.begin_nested()
    insert_rows(session, Inspection.__table__, [dropped])
    sp.rollback()
    insert_rows(session, Inspection.__table__, [changed, kept])
    session.get(Inspection, changed["id"]).lat = 30.5
    session.commit()
    rows = {r.entity_id: r for r in session.exec(select(Change).where(Change.seq > before)).all()}
    assert set(rows) == {changed["id"], kept["id"]}
    assert rows[changed["id"]].data["lat"] == 30.5 and rows[kept["id"]].data["lat"] == 29.0


def test_an_id_written_again_after_its_savepoint_rolled_back_is_published_as_it_now_is(session, units):
    """A bulk row lost to a rolled-back savepoint must not be published from memory when the same id
    is written again some other way (the slow path of a push after its fast path failed)."""
    grid = units["grid-a-1-1"]
    place = place_of(session, units, "grid-a-1-1", "rental")
    row = inspection_row(place, grid)
    before = session.exec(select(sa.func.max(Change.seq))).one() or 0
    outer = session.begin_nested()
    inner = session.begin_nested()
    insert_rows(session, Inspection.__table__, [row])
    inner.commit()
    outer.rollback()  # the enclosing savepoint goes, and the row with it
    session.execute(sa.insert(Inspection.__table__), [row | {"lat": 31.5}])  # a plain Core insert of the same id
    session.commit()
    [change] = session.exec(select(Change).where(Change.seq > before)).all()
    assert change.entity_id == row["id"] and change.data["lat"] == 31.5


def test_payload_times_are_utc_text_per_instant_even_when_local_times_compare_equal():
    """Payload times are formatted through a cache; it must key on the instant, not on a local time
    that compares equal to another (01:30 twice on the night New York's clocks go back)."""
    from zoneinfo import ZoneInfo

    from app.sync.feed import iso

    ny = ZoneInfo("America/New_York")
    first, second = (datetime(2025, 11, 2, 1, 30, tzinfo=ny, fold=f) for f in (0, 1))
    assert first == second  # Python's view of two different instants
    assert [iso(first), iso(second)] == ["2025-11-02T05:30:00Z", "2025-11-02T06:30:00Z"]
    assert iso(datetime(2026, 3, 2, 9, 0, tzinfo=timezone(timedelta(hours=8)))) == "2026-03-02T01:00:00Z"
    assert iso(datetime(2026, 3, 2, 1, 0)) == "2026-03-02T01:00:00Z"  # naive values are UTC here
    assert iso(None) is None
