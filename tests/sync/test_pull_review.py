"""GET /api/v1/sync/pull, adversarially: what the server decides about a phone's own records reaches it,
a hazard passed across town lines keeps its past holder's phone current, a garbled cursor is a 410,
never a 500, and a policy changed between the pages of a pull still reaches the device."""

import base64
import json
from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import login
from tests.helpers import hazard_data, op, place_of, push, statements_on, uid
from tests.sync.test_pull import get_page, pull_all

NOW = datetime.now(timezone.utc)


@pytest.fixture
def c(client):
    return client


def report(c, headers, place_id, **kw):
    data = hazard_data(place_id, NOW - timedelta(hours=1), **kw)
    [res] = push(c, headers, op("hazard.report", data))
    assert res["status"] == "applied", res
    return data["id"]


def act(c, headers, hazard_id, **body):
    r = c.post(f"/api/v1/hazards/{hazard_id}/actions", json=body, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def latest(changes, entity_id):
    mine = [ch for ch in changes if ch["id"] == entity_id]
    return mine[-1] if mine else None


def test_a_hazard_rerouted_by_the_devices_own_move_reaches_it(c, session, units):
    """Moving a premises to another town hands its hazards to that town's bodies: the device that moved
    it sent the premises, not the hazards' new holder, grid and clocks, so those are news to it too."""
    admin = login(c, "admin", device="admin-phone")
    place = place_of(session, units, "grid-a-1-1", "rental")
    hid = report(c, login(c, "worker-a1", device="phone-1"), place.id, category="window_bars")
    _, cursor, _ = pull_all(c, admin, limit=1000)
    [res] = push(c, admin, op("place.upsert", {"id": place.id, "name": place.name, "address": place.address,
                                               "grid_id": units["grid-b-1-1"].id, "place_class": "rental"}))
    assert res["status"] == "applied", res
    changes, _, _ = pull_all(c, admin, cursor)
    assert place.id not in [ch["id"] for ch in changes]  # the premises itself is the device's own write
    h = latest(changes, hid)
    assert h is not None and not h["deleted"], changes
    assert h["data"]["holder_org_unit_id"] == units["office-b"].id
    assert (h["data"]["grid_id"], h["data"]["town_id"]) == (units["grid-b-1-1"].id, units["town-b"].id)


def test_a_reinspection_pushed_by_the_device_brings_back_the_clocks_it_set(c, session, units):
    """The push answers a re-inspection with its outcome and status only; the hazard's new clocks,
    closing time and version come from the pull, also to the phone that re-inspected."""
    phone = login(c, "worker-a1", device="phone-1")
    office = login(c, "office-a", device="desk")
    place = place_of(session, units, "grid-a-1-1", "nine_small")
    hid = report(c, login(c, "worker-a1", device="phone-2"), place.id, category="blocked_exit")
    act(c, office, hid, action="accept")
    act(c, office, hid, action="order_rectification")
    _, cursor, _ = pull_all(c, phone)
    [res] = push(c, phone, op("hazard.reinspect", {"id": hazard_data(place.id, NOW)["id"], "hazard_id": hid,
                                                   "rectified": True, "note": "已整改", "at": NOW.isoformat(),
                                                   "photos": ["b" * 64]}))
    assert res["status"] == "applied" and res["result"]["status"] == "closed", res
    changes, _, _ = pull_all(c, phone, cursor)
    h = latest(changes, hid)
    assert h is not None, changes
    assert h["data"]["status"] == "closed" and h["data"]["closed_at"] and h["data"]["next_due"] is None


def test_a_hazard_passed_back_across_town_lines_updates_the_unit_that_held_it(c, session, units):
    """A town office that passes a hazard on to another town's office keeps a copy; so does that office
    when it passes it back. The pull must not leave the hazard on the second office's device as its own."""
    office_a, office_b = login(c, "office-a", device="desk-a"), login(c, "office-b", device="desk-b")
    place = place_of(session, units, "grid-a-1-1", "rental")
    hid = report(c, login(c, "worker-a1"), place.id, category="ebike_indoor")
    _, cursor, _ = pull_all(c, office_b, limit=1000)
    act(c, office_a, hid, action="transfer", to_unit_id=units["office-b"].id, reason="属乙镇管辖")
    changes, cursor, _ = pull_all(c, office_b, cursor)
    h = latest(changes, hid)
    assert h is not None and h["data"]["holder_org_unit_id"] == units["office-b"].id
    admin = login(c, "admin", device="admin-desk")
    _, admin_cursor, _ = pull_all(c, admin, limit=1000)
    act(c, office_b, hid, action="return", reason="不属本镇")
    assert c.get(f"/api/v1/hazards/{hid}", headers=office_b).status_code == 200  # still seen: a copy
    changes, cursor, _ = pull_all(c, office_b, cursor)
    h = latest(changes, hid)
    assert h is not None and not h["deleted"], changes
    assert h["data"]["holder_org_unit_id"] == units["office-a"].id
    # who sees everything gets it once, not once more as the copy addressed to office B
    assert [ch["id"] for ch in pull_all(c, admin, admin_cursor)[0]] == [hid]
    # and what happens to it later still reaches the copy's holder
    act(c, office_a, hid, action="accept")
    changes, cursor, _ = pull_all(c, office_b, cursor)
    h = latest(changes, hid)
    assert h is not None and h["data"]["status"] == "accepted", changes
    # while the office of the hazard's own town gets each change once, not once more as a copy
    _, ca, _ = pull_all(c, office_a, limit=1000)
    act(c, office_a, hid, action="order_rectification")
    changes, _, _ = pull_all(c, office_a, ca)
    assert [ch["id"] for ch in changes] == [hid]


def _encode(d) -> str:
    return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")


def _decode(cursor: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))


def test_a_garbled_cursor_is_a_410_not_a_500(c, session, units):
    w = login(c, "worker-a1")
    deep = base64.urlsafe_b64encode(b"[" * 1400).decode()  # nests deeper than the JSON decoder recurses
    assert len(deep) <= 2000
    assert get_page(c, w, deep, status=410)["error"]["code"] == "cursor_expired"
    page = get_page(c, w, limit=2)
    assert page["more"]
    mine = _decode(page["cursor"])
    _, rest, _ = pull_all(c, w, page["cursor"])
    resting = _decode(rest)
    # this caller's own cursor, with numbers past the feed's BIGINT (a 500 from the database) or
    # positions that cannot be
    for forged in ({**resting, "m": "c", "u": 2 ** 70, "p": "changes", "k": None},
                   {**resting, "m": "c", "u": 2 ** 63, "p": "changes", "k": 1},
                   {**mine, "p": "ref", "k": -3}, {**mine, "a": -1}):
        body = get_page(c, w, _encode(forged), status=410)
        assert body["error"]["code"] == "cursor_expired", forged


def _scope(session, username):
    from sqlmodel import select

    from app.auth.models import User
    from app.auth.scope import scope_for

    return scope_for(session, session.exec(select(User).where(User.username == username)).one())


def _newer(policy, code="test_new_category"):
    """The policy as a rolling restart brings it: another version, one more category, first in the list."""
    first = policy.categories[0]
    added = first.model_copy(update={"code": code, "name_zh": "新增类别", "name_en": "Added category"})
    return policy.model_copy(update={"version": policy.version + "-next", "categories": [added, *policy.categories]})


def test_a_policy_that_changes_while_a_pull_is_paged_still_reaches_the_device(c, session, units):
    """Pages of one pull may be answered by workers running different policies (a rolling restart). The
    device must end up with the newer one's reference data, on this pull or the next."""
    from app.referrals.policy import load_policy
    from app.sync.pull import pull

    old = load_policy()
    new = _newer(old)
    scope = _scope(session, "worker-a1")

    def follow(policies, cursor=None, limit=1000):
        """A pull whose pages are answered under ``policies`` in turn (the last for any further page):
        the categories the device got, by code, and the resting cursor."""
        got, n = {}, 0
        while True:
            page = pull(session, scope, policies[min(n, len(policies) - 1)], device_id="phone-r", cursor=cursor,
                        limit=limit)
            got.update({ch["id"]: ch["data"] for ch in page.changes if ch["type"] == "category"})
            cursor, n = page.cursor, n + 1
            if not page.more:
                return got, cursor

    # a first pull whose reference data is paged across the change, then the next pull
    got, cursor = follow([old, new], limit=3)
    got.update(follow([new], cursor)[0])
    assert "test_new_category" in got
    assert {got[code]["policy_version"] for code in new.category_codes} == {new.version}

    # an incremental pull with news on two pages, the first answered before the change
    for category in ("blocked_exit", "lpg_misuse"):
        report(c, login(c, "worker-a1", device="phone-2"), place_of(session, units, "grid-a-1-1", "rental").id,
               category=category)
    _, cursor = follow([old])
    for category in ("window_bars", "ebike_indoor"):
        report(c, login(c, "worker-a1", device="phone-2"), place_of(session, units, "grid-a-1-1", "nine_small").id,
               category=category)
    got, cursor = follow([old, new], cursor, limit=1)
    got.update(follow([new], cursor)[0])
    assert "test_new_category" in got


def test_a_reinspection_push_on_a_hazard_copied_to_no_other_town_adds_no_statement(c, db, session, units):
    """The copies addressed across town lines are looked up only for hazards that have such a copy: a
    re-inspection push (a hot path) on an ordinary hazard pays no statement for them."""
    worker = login(c, "worker-a1")
    place = place_of(session, units, "grid-a-1-1", "rental")
    hid = report(c, worker, place.id, category="window_bars")
    body = {"id": uid(), "hazard_id": hid, "rectified": False, "note": "", "photos": [],
            "at": (NOW - timedelta(minutes=30)).isoformat()}
    with statements_on(db.connection) as statements:
        [res] = push(c, worker, op("hazard.reinspect", body))
    assert res["status"] == "applied", res
    assert not [s for s in statements if s.startswith("SELECT hazard_cc")], statements  # a statement of their own
