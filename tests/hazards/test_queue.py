"""The queue: the caller's unit's hazards, overdue first then nearest deadline, filtered and keyset-paged."""

from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import login
from tests.helpers import place_of, report

CN = timezone(timedelta(hours=8))


def at(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=CN)


@pytest.fixture
def many(clocked_client, clock, session, units):
    """Hazards reported on different days, so their acknowledgement clocks differ."""
    c = clocked_client
    worker = login(c, "worker-a1")
    rental = place_of(session, units, "grid-a-1-1", "rental")
    shop = place_of(session, units, "grid-a-1-1", "nine_small")
    ids = []
    for day, place, severity in [(2, rental, "general"), (3, shop, "general"), (4, rental, "general"),
                                 (5, shop, "general"), (6, rental, "general")]:
        clock.now = at(f"2026-03-0{day}T09:00")
        ids.append(report(c, worker, place.id, at(f"2026-03-0{day}T08:00"), category="ebike_indoor",
                          severity=severity)["hazard_id"])
    return ids


def items(c, who, **params):
    r = c.get("/api/v1/queue", params=params, headers=login(c, who))
    assert r.status_code == 200, r.text
    return r.json()


def test_sorted_by_urgency_overdue_first(clocked_client, clock, many):
    clock.now = at("2026-03-06T12:00")  # the first three acknowledgement clocks have run out
    page = items(clocked_client, "office-a")
    got = [i["id"] for i in page["items"]]
    assert got == many  # earliest deadline first == reported first here
    assert [i["overdue"] for i in page["items"]] == [True, True, True, False, False]
    assert items(clocked_client, "office-a", overdue="true")["items"][0]["id"] == many[0]
    assert len(items(clocked_client, "office-a", overdue="true")["items"]) == 3
    assert len(items(clocked_client, "office-a", overdue="false")["items"]) == 2


def every_page(c, who, limit: int) -> list[str]:
    """The ids of every page of the queue, following next_cursor to the end."""
    seen, cursor = [], None
    while True:
        page = items(c, who, limit=limit, **({"cursor": cursor} if cursor else {}))
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            return seen


def test_keyset_pages_visit_each_once(clocked_client, many):
    assert every_page(clocked_client, "office-a", limit=2) == many


def test_equal_deadlines_list_oldest_report_first_and_page_through_the_tie(clocked_client, clock, session, units):
    """A day's reports share their acknowledgement deadline; among them the queue goes by when each
    was reported, not by id (ids here are made to sort the other way), on every page."""
    c = clocked_client
    worker = login(c, "worker-a1")
    rental = place_of(session, units, "grid-a-1-1", "rental")
    ids = [f"{9 - i}0000000-0000-4000-8000-000000000000" for i in range(4)]  # descending ids
    for i, hid in enumerate(ids):
        clock.now = at(f"2026-03-02T{8 + i:02d}:00")
        report(c, worker, rental.id, at("2026-03-02T07:00"), id=hid, category="ebike_indoor")
    first = items(c, "office-a")["items"]
    assert len({i["deadline"] for i in first}) == 1  # one tie
    assert [i["id"] for i in first] == ids
    assert every_page(c, "office-a", limit=1) == ids


def test_a_cursor_from_before_the_age_tiebreak_or_another_listing_is_refused(clocked_client, many):
    import base64
    import json

    c = clocked_client
    old = base64.urlsafe_b64encode(json.dumps(["2026-03-05T16:00:00+00:00", many[0]]).encode()).decode()
    r = c.get("/api/v1/queue", params={"cursor": old}, headers=login(c, "office-a"))
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_cursor"
    naive = base64.urlsafe_b64encode(json.dumps(["2026-03-05T16:00:00", "2026-03-02T01:00:00",
                                                  many[0]]).encode()).decode()
    r = c.get("/api/v1/queue", params={"cursor": naive}, headers=login(c, "office-a"))
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_cursor"
    plain = items(c, "office-a", limit=1)["next_cursor"]
    r = c.get("/api/v1/queue", params={"cursor": plain, "cc": "true"}, headers=login(c, "office-a"))
    assert r.status_code == 422 and r.json()["error"]["field"] == "cursor"


def test_filters(clocked_client, many, units):
    c = clocked_client
    assert {i["place"]["place_class"] for i in items(c, "office-a", place_class="rental")["items"]} == {"rental"}
    assert len(items(c, "office-a", place_class="rental")["items"]) == 3
    assert items(c, "office-a", severity="major")["items"] == []
    assert len(items(c, "office-a", grid_id=units["grid-a-1-1"].id)["items"]) == 5
    assert items(c, "office-a", grid_id=units["grid-a-2-1"].id)["items"] == []
    assert items(c, "office-a", status="closed")["items"] == []
    r = c.get("/api/v1/queue", params={"cursor": "garbage"}, headers=login(c, "office-a"))
    assert r.status_code == 422 and r.json()["error"]["field"] == "cursor"


def test_queue_is_the_callers_unit(clocked_client, many):
    assert items(clocked_client, "office-b")["items"] == []
    assert items(clocked_client, "police-a")["items"] == []  # not referred to it
    assert len(items(clocked_client, "worker-a1")["items"]) == 5  # its grid's hazards to follow
    assert items(clocked_client, "worker-a2")["items"] == []


def test_figures_by_tier(clocked_client, clock, many):
    c = clocked_client
    office = login(c, "office-a")
    c.post(f"/api/v1/hazards/{many[0]}/actions", json={"action": "accept"}, headers=office)
    c.post(f"/api/v1/hazards/{many[0]}/actions", json={"action": "record_reinspection", "rectified": True,
                                                        "photos": ["e" * 64]}, headers=office)
    clock.now = at("2026-03-10T09:00")
    f = c.get("/api/v1/figures", params={"from": "2026-03-01T00:00:00+08:00", "to": "2026-03-31T00:00:00+08:00"},
              headers=office).json()
    assert f["total"]["found"] == 5 and f["total"]["closed"] == 1 and f["total"]["open"] == 4
    assert f["total"]["overdue"] == 4
    assert f["total"]["cleared_by_deadline_rate"] == 0.2
    assert f["total"]["median_hours_to_close"] is not None
    assert [r["key"] for r in f["rows"]] == ["town_office"]
    other = c.get("/api/v1/figures", headers=login(c, "office-b")).json()
    assert other["total"]["found"] == 0


def test_partial_index_predicate_names_exactly_the_open_statuses():
    from app.hazards.models import OPEN_WHERE
    from app.referrals.service import OPEN_STATUSES

    assert str(OPEN_WHERE) == "status IN ({})".format(", ".join(f"'{s.value}'" for s in OPEN_STATUSES))


def test_cc_queue_follows_the_hazard(clocked_client, clock, session, units):
    """Copies carry the hazard's urgency and openness: an escalation shows in the cc'd unit's list at
    the new deadline, and a closed hazard leaves it (but stays findable with status=closed)."""
    c = clocked_client
    clock.now = at("2026-03-02T09:00")
    worker = login(c, "worker-a1")
    shop = place_of(session, units, "grid-a-1-1", "nine_small")
    first = report(c, worker, shop.id, at("2026-03-02T08:00"), category="flammables_storage", severity="major")["hazard_id"]
    clock.now = at("2026-03-03T09:00")
    second = report(c, worker, shop.id, at("2026-03-03T08:00"), category="insufficient_exits", severity="major")["hazard_id"]
    listed = items(c, "office-a", cc="true")["items"]  # the office never holds these: it follows them
    assert [i["id"] for i in listed] == [first, second]
    assert [i["deadline"] for i in listed] == ["2026-03-03T16:00:00Z", "2026-03-04T16:00:00Z"]
    brigade = login(c, "brigade")
    c.post(f"/api/v1/hazards/{first}/actions", json={"action": "accept"}, headers=brigade)
    closed = c.post(f"/api/v1/hazards/{first}/actions", json={"action": "record_reinspection", "rectified": True,
                                                               "photos": ["e" * 64]}, headers=brigade)  # 当场整改
    assert closed.json()["status"] == "closed", closed.text
    assert [i["id"] for i in items(c, "office-a", cc="true")["items"]] == [second]
    assert [i["id"] for i in items(c, "office-a", cc="true", status="closed")["items"]] == [first]


def test_cc_queue_lists_equal_deadlines_oldest_report_first_on_every_page(clocked_client, clock, session, units):
    """As the held queue: equal deadlines oldest report first. The copies paged on (deadline, hazard id), a
    phone's random UUID, so reports of one day came in whatever order their ids sorted."""
    c = clocked_client
    worker = login(c, "worker-a1")
    shop = place_of(session, units, "grid-a-1-1", "nine_small")
    reported = []
    for hour, hid in (("08", "cccccccc-0000-4000-8000-000000000001"), ("09", "bbbbbbbb-0000-4000-8000-000000000002"),
                      ("10", "aaaaaaaa-0000-4000-8000-000000000003")):
        clock.now = at(f"2026-03-02T{hour}:00")
        reported.append(report(c, worker, shop.id, at(f"2026-03-02T{hour}:00"), id=hid, severity="major",
                               category="flammables_storage")["hazard_id"])
    listed = items(c, "office-a", cc="true")["items"]
    assert [i["id"] for i in listed] == reported
    assert len({i["deadline"] for i in listed}) == 1  # one deadline: the order is the reports' age
    paged, cursor = [], None
    while True:
        page = items(c, "office-a", cc="true", limit=1, **({"cursor": cursor} if cursor else {}))
        paged += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert paged == reported


def test_a_cc_cursor_from_before_the_copies_knew_their_age_is_refused(clocked_client, many):
    import base64
    import json

    c = clocked_client
    old = base64.urlsafe_b64encode(json.dumps(["2026-03-05T16:00:00+00:00", None, many[0]]).encode()).decode()
    r = c.get("/api/v1/queue", params={"cursor": old, "cc": "true"}, headers=login(c, "office-a"))
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_cursor"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_migration_gives_every_copy_its_hazards_age(backend, tmp_path):
    import sqlalchemy as sa

    from app import migrate
    from tests.test_migrations import seeded_database

    with seeded_database(backend, tmp_path) as (url, engine):
        migrate.downgrade(url, revision="0018")
        migrate.upgrade(url)
        with engine.connect() as conn:
            pairs = conn.execute(sa.text("SELECT c.created_at, h.created_at FROM hazard_cc c "
                                         "JOIN hazards h ON h.id = c.hazard_id")).all()
        assert pairs and all(copy == hazard for copy, hazard in pairs)
