"""Jurisdiction, and what pull brings, when grids, units, holders, devices and premises change: nobody sees or
changes what lies outside their scope, through any door (GET, actions, pushes, photos, device health, pull)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlmodel import select

from app.auth.models import Device, User
from app.hazards.models import Hazard, Reinspection
from app.photos.storage import sha256_hex
from tests.conftest import login
from tests.helpers import hazard_data, op, place_of, push
from tests.photos.conftest import jpeg_bytes, two_tone
from tests.sync.test_pull import get_page, ids, pull_all

NOW = datetime.now(timezone.utc)


@pytest.fixture
def c(client):
    return client


def report(c, headers, place_id, **kw) -> str:
    data = hazard_data(place_id, NOW - timedelta(hours=1), **kw)
    [res] = push(c, headers, op("hazard.report", data))
    assert res["status"] == "applied", res
    return data["id"]


def act(c, headers, hazard_id, status=200, **body):
    r = c.post(f"/api/v1/hazards/{hazard_id}/actions", json=body, headers=headers)
    assert r.status_code == status, r.text
    return r.json()


def photo(c, headers, seed: int = 0) -> str:
    data = jpeg_bytes(two_tone(64 + seed, 48))
    r = c.put(f"/api/v1/blobs/{sha256_hex(data)}", content=data, headers={**headers, "Content-Type": "image/jpeg"})
    assert r.status_code in (200, 201), r.text
    return sha256_hex(data)


def move_user(session, username: str, unit_id: str) -> None:
    u = session.exec(select(User).where(User.username == username)).one()
    u.org_unit_id = unit_id
    session.add(u)
    session.commit()


def blob_status(c, headers, sha: str) -> tuple[int, int]:
    return (c.get(f"/api/v1/blobs/{sha}", headers=headers).status_code,
            c.get(f"/api/v1/blobs/{sha}/thumb", headers=headers).status_code)


# -- a grid worker's grids change ----------------------------------------------------------


def test_worker_moved_to_another_grid_starts_over_and_loses_the_old_grids_records_and_photos(c, session, units):
    """the old cursor is a 410 (scope_changed); the full pull holds the new grid's premises and
    hazards only; the old grid's hazard, its photo and thumbnail are 404; a push about it is refused."""
    w = login(c, "worker-a1", device="phone-1")
    sha = photo(c, w)
    old_place = place_of(session, units, "grid-a-1-1", "rental")
    new_place = place_of(session, units, "grid-a-1-2", "rental")
    old_h = report(c, w, old_place.id, photos=[sha])
    new_h = report(c, login(c, "admin"), new_place.id)  # a hazard already in the grid the worker joins
    _, cursor, _ = pull_all(c, w)
    assert blob_status(c, w, sha) == (200, 200)
    move_user(session, "worker-a1", units["grid-a-1-2"].id)
    body = get_page(c, w, cursor, status=410)
    assert body["error"]["code"] == "cursor_expired"
    changes, _, _ = pull_all(c, w)
    grid2 = units["grid-a-1-2"].id
    assert new_place.id in ids(changes, "place") and old_place.id not in ids(changes, "place")
    assert all(ch["data"]["grid_id"] == grid2 for ch in changes if ch["type"] in ("place", "hazard", "inspection"))
    assert old_h not in ids(changes) and new_h in ids(changes, "hazard")
    assert c.get(f"/api/v1/hazards/{old_h}", headers=w).status_code == 404
    assert blob_status(c, w, sha) == (404, 404)
    [res] = push(c, w, op("hazard.reinspect", {"id": hazard_data(old_place.id, NOW)["id"], "hazard_id": old_h,
                                               "rectified": True, "note": "x", "at": NOW.isoformat(), "photos": []}))
    assert res["status"] == "rejected" and res["error"]["code"] == "unknown_hazard", res


# -- acting on what one cannot see ---------------------------------------------------------


def test_a_holder_from_another_town_cannot_merge_into_a_hazard_it_cannot_see(c, session, units):
    """A merge changes the original too (photos added, version bumped, `merged_in` on its timeline). Office B
    holds a town-A hazard (transferred to it) and asks to merge it into another hazard of those premises that
    it cannot see: refused as a target that is not there, and the unseen hazard is left as it was."""
    office_a, office_b = login(c, "office-a"), login(c, "office-b")
    w = login(c, "worker-a1")
    place = place_of(session, units, "grid-a-1-1", "rental")
    first = report(c, w, place.id, category="blocked_exit")
    second = report(c, w, place.id, category="ebike_indoor", photos=[photo(c, w, 1)])
    act(c, office_a, second, action="transfer", to_unit_id=units["office-b"].id, reason="属乙镇管辖")
    assert c.get(f"/api/v1/hazards/{first}", headers=office_b).status_code == 404
    version = session.get(Hazard, first).version
    r = c.post(f"/api/v1/hazards/{second}/actions", json={"action": "merge", "merge_into_id": first},
               headers=office_b)
    session.expire_all()
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_merge_target", r.text
    assert first not in r.text  # nothing said of the hazard it may not see
    assert session.get(Hazard, first).version == version
    assert session.get(Hazard, second).status != "merged"


def test_a_pushed_reinspection_of_a_merged_hazard_is_checked_against_the_hazard_it_lands_on(c, session, units):
    """A re-inspection of a merged duplicate is recorded on the hazard it was merged into: who may record it is
    decided on that one. The town office, holder of a duplicate it merged into a hazard the police station
    holds, may not re-inspect (and so close) the police station's hazard by pushing a re-inspection of its
    own merged duplicate, as at the desk it may not re-inspect the original."""
    office_a, police_a = login(c, "office-a"), login(c, "police-a")
    office_phone = login(c, "office-a", device="office-phone")
    w = login(c, "worker-a1")
    place = place_of(session, units, "grid-a-1-1", "rental")
    original = report(c, w, place.id, category="blocked_exit")
    dup = report(c, w, place.id, category="ebike_indoor")
    act(c, office_a, original, action="escalate", reason="需派出所处理")
    act(c, police_a, original, action="accept")
    assert session.get(Hazard, original).holder_unit_id == units["police-a"].id
    # at the desk the town office may not re-inspect the police station's hazard
    act(c, office_a, original, status=403, action="record_reinspection", rectified=True, note="已整改")
    act(c, office_a, dup, action="merge", merge_into_id=original)
    status_before = session.get(Hazard, original).status
    [res] = push(c, office_phone, op("hazard.reinspect", {"id": hazard_data(place.id, NOW)["id"], "hazard_id": dup,
                                                          "rectified": True, "note": "已整改",
                                                          "at": NOW.isoformat(), "photos": []}))
    session.expire_all()
    assert res["status"] == "rejected" and res["error"]["code"] == "not_allowed", res
    assert original in res["error"]["message"]  # the one it was merged into, which the office may see
    assert session.exec(select(Reinspection).where(Reinspection.hazard_id == original)).all() == []
    assert session.get(Hazard, original).status == status_before


# -- units, devices and premises that change -----------------------------------------------


def test_an_office_user_moved_to_another_town_loses_the_old_towns_hazards_photos_and_phones(c, session, units):
    """scope is computed per request from the user's unit, so an office user moved from town A
    to town B gets 410 on the old cursor, 404 on town A's hazards and photos, and town B's phones only."""
    office = login(c, "office-a", device="desk")
    w = login(c, "worker-a1", device="phone-a1")
    sha = photo(c, w, 2)
    hid = report(c, w, place_of(session, units, "grid-a-1-1", "rental").id, photos=[sha])
    login(c, "worker-b1", device="phone-b1")
    _, cursor, _ = pull_all(c, office, limit=1000)
    assert c.get(f"/api/v1/hazards/{hid}", headers=office).status_code == 200
    assert blob_status(c, office, sha) == (200, 200)
    move_user(session, "office-a", units["office-b"].id)
    assert get_page(c, office, cursor, status=410)["error"]["code"] == "cursor_expired"
    assert c.get(f"/api/v1/hazards/{hid}", headers=office).status_code == 404
    assert blob_status(c, office, sha) == (404, 404)
    changes, _, _ = pull_all(c, office, limit=1000)
    assert hid not in ids(changes) and all(ch["data"]["town_id"] == units["town-b"].id
                                           for ch in changes if ch["type"] in ("place", "hazard", "inspection"))
    names = {d["username"] for d in c.get("/api/v1/devices/health", headers=office).json()}
    assert "worker-b1" in names and "worker-a1" not in names


def test_a_revoked_device_and_a_deactivated_user_get_nothing(c, session, units):
    """pull, push, blob GET/thumb and device health all answer 401 once the device is revoked
    or the user deactivated, and the deactivated user's phones leave the health list."""
    w = login(c, "worker-a1", device="lost-phone")
    other = login(c, "worker-a1", device="other-phone")
    sha = photo(c, w, 3)
    report(c, w, place_of(session, units, "grid-a-1-1", "rental").id, photos=[sha])
    _, cursor, _ = pull_all(c, w)
    office = login(c, "office-a")
    dev_id = session.exec(select(User).where(User.username == "worker-a1")).one().id
    lost_id = session.exec(select(Device.id).where(Device.user_id == dev_id, Device.device_key == "lost-phone")).one()
    assert c.post(f"/api/v1/devices/{lost_id}/revoke", headers=office).status_code == 200
    assert c.get("/api/v1/sync/pull", params={"cursor": cursor}, headers=w).status_code == 401
    assert blob_status(c, w, sha) == (401, 401)
    assert c.post("/api/v1/sync/push", json={"ops": []}, headers=w).status_code == 401
    assert blob_status(c, other, sha) == (200, 200)
    admin = login(c, "admin")
    assert c.post(f"/api/v1/users/{dev_id}/deactivate", headers=admin).status_code == 200
    assert blob_status(c, other, sha) == (401, 401)
    assert c.get("/api/v1/sync/pull", headers=other).status_code == 401
    names = {d["username"] for d in c.get("/api/v1/devices/health", headers=office).json()}
    assert "worker-a1" not in names


def test_a_premises_moved_to_another_town_takes_its_photos_to_the_new_towns_bodies(c, session, units):
    """moved across town lines, the hazard's photo is 404 for the old grid worker and the old
    town office and police, 200 for the new town office; the old town's pull says `moved` with the new place."""
    w = login(c, "worker-a1")
    office_a, police_a, office_b = login(c, "office-a"), login(c, "police-a"), login(c, "office-b")
    sha = photo(c, w, 4)
    place = place_of(session, units, "grid-a-1-1", "rental")
    hid = report(c, w, place.id, photos=[sha])
    _, cur_a, _ = pull_all(c, office_a, limit=1000)
    r = c.patch(f"/api/v1/places/{place.id}", json={"grid_id": units["grid-b-1-1"].id}, headers=login(c, "admin"))
    assert r.status_code == 200, r.text
    for who in (w, office_a, police_a):
        assert blob_status(c, who, sha) == (404, 404)
        assert c.get(f"/api/v1/hazards/{hid}", headers=who).status_code == 404
    assert blob_status(c, office_b, sha) == (200, 200)
    changes, _, _ = pull_all(c, office_a, cur_a)
    [tomb] = [ch for ch in changes if ch["id"] == hid]
    assert tomb["deleted"] and tomb["data"]["reason"] == "moved"
    assert tomb["data"]["to"]["town_id"] == units["town-b"].id
