"""A premises moved to another town or community (a boundary redrawn, a wrong grid corrected): its
open hazards pass to the bodies whose jurisdiction it now lies in, so the one holder who must act is
always a body of the premises' own location, and the old one no longer sees or acts on it."""

from datetime import datetime, timedelta, timezone

from sqlmodel import select

from app.hazards.models import Hazard, HazardCC, Referral
from app.org.models import UnitKind
from app.org.service import create_unit
from app.places.models import Place
from tests.conftest import login
from tests.helpers import place_of, report

NOW = datetime.now(timezone.utc)


def _hazard(session, hazard_id: str) -> Hazard:
    session.expire_all()
    return session.get(Hazard, hazard_id)


def _report(client, session, units, grid: str, place_class: str, **kw) -> tuple[Place, str]:
    place = place_of(session, units, grid, place_class)
    worker = login(client, {"a": "worker-a1", "b": "worker-b1"}[grid.split("-")[1]])
    result = report(client, worker, place.id, NOW - timedelta(minutes=5), photos=[], **kw)
    return place, result["hazard_id"]


def _move(client, place_id: str, grid_id: str, who: str = "admin"):
    return client.patch(f"/api/v1/places/{place_id}", json={"grid_id": grid_id}, headers=login(client, who, device="desk"))


def bare_town(session, units):
    """A new town of the county with a community and a grid but no office or police station; its grid."""
    town_c = create_unit(session, code="town-c", name="新设镇", kind=UnitKind.town, parent=units["county"])
    community_c = create_unit(session, code="community-c-1", name="新设社区", kind=UnitKind.community, parent=town_c)
    grid_c = create_unit(session, code="grid-c-1-1", name="新设网格", kind=UnitKind.grid, parent=community_c)
    session.commit()
    return grid_c


def beat_station(session, units):
    """A second police station of town b whose beat is its community 2 (community-b-1 stays police-b's)."""
    station = create_unit(session, code="police-b-2", name="第二派出所", kind=UnitKind.police_station, parent=units["town-b"])
    community = session.get(type(units["community-b-2"]), units["community-b-2"].id)
    community.police_station_id = station.id
    session.add(community)
    session.commit()
    return station


def _ccs(session, hazard_id: str) -> dict[str, str]:
    session.expire_all()
    return {cc.unit_id: cc.reason for cc in session.exec(select(HazardCC).where(HazardCC.hazard_id == hazard_id))}


def test_a_town_office_hazard_goes_to_the_new_towns_office(client, session, units):
    place, hid = _report(client, session, units, "grid-a-1-1", "rental", category="ebike_indoor")
    office_a, office_b = login(client, "office-a", device="desk"), login(client, "office-b", device="desk")
    assert client.post(f"/api/v1/hazards/{hid}/actions", json={"action": "accept"}, headers=office_a).status_code == 200
    before = _hazard(session, hid)
    assert (before.holder_unit_id, before.status) == (units["office-a"].id, "accepted")

    r = _move(client, place.id, units["grid-b-1-1"].id)
    assert r.status_code == 200, r.text

    h = _hazard(session, hid)
    assert (h.holder_unit_id, h.tier, h.town_id) == (units["office-b"].id, "town_office", units["town-b"].id)
    assert h.status == "referred"  # the new holder reports in (报到) on a fresh clock, as after any transfer
    assert h.previous_holder_unit_id is None  # a move is not a hop to `return`: it had none before
    hops = session.exec(select(Referral).where(Referral.hazard_id == hid).order_by(Referral.seq)).all()
    assert [(x.from_unit_id, x.to_unit_id, x.via, x.outcome) for x in hops] == [
        (None, units["office-a"].id, "route", "transferred"), (units["office-a"].id, units["office-b"].id, "transfer", None)]
    assert "场所迁入" in hops[-1].reason and units["town-b"].name in hops[-1].reason
    # the old office keeps no copy: the premises left its jurisdiction
    assert units["office-a"].id not in _ccs(session, hid)
    assert client.get(f"/api/v1/hazards/{hid}", headers=office_a).status_code == 404
    detail = client.get(f"/api/v1/hazards/{hid}", headers=office_b)
    assert detail.status_code == 200
    moved = [e for e in detail.json()["timeline"] if e["kind"] == "relocated"]
    assert len(moved) == 1 and moved[0]["data"]["to_town_id"] == units["town-b"].id
    assert moved[0]["data"]["from_town_id"] == units["town-a"].id
    # the new holder acts; the old one may not
    assert client.post(f"/api/v1/hazards/{hid}/actions", json={"action": "accept"}, headers=office_b).status_code == 200
    queue_a = client.get("/api/v1/queue", headers=office_a).json()["items"]
    assert hid not in {i["id"] for i in queue_a}


def test_a_police_hazard_and_its_copy_follow_the_premises(client, session, units):
    place, hid = _report(client, session, units, "grid-a-1-1", "key_unit_3", category="blocked_exit")
    h = _hazard(session, hid)
    assert (h.tier, h.holder_unit_id) == ("police_station", units["police-a"].id)
    assert _ccs(session, hid) == {units["office-a"].id: "routing"}

    assert _move(client, place.id, units["grid-b-2-1"].id).status_code == 200

    h = _hazard(session, hid)
    assert (h.tier, h.holder_unit_id) == ("police_station", units["police-b"].id)
    assert _ccs(session, hid) == {units["office-b"].id: "routing"}
    assert client.get(f"/api/v1/hazards/{hid}", headers=login(client, "police-a", device="desk")).status_code == 404
    assert client.get(f"/api/v1/hazards/{hid}", headers=login(client, "office-a", device="desk")).status_code == 404
    cc_b = client.get("/api/v1/queue", params={"cc": "true"}, headers=login(client, "office-b", device="desk")).json()
    assert hid in {i["id"] for i in cc_b["items"]}


def test_a_brigade_hazard_keeps_its_holder_and_its_copies_move(client, session, units):
    place, hid = _report(client, session, units, "grid-a-1-1", "rental", category="ebike_indoor", severity="major")
    h = _hazard(session, hid)
    assert (h.tier, h.holder_unit_id) == ("brigade", units["brigade"].id)
    events_before = h.event_seq

    assert _move(client, place.id, units["grid-b-1-1"].id).status_code == 200

    h = _hazard(session, hid)
    assert (h.holder_unit_id, h.status) == (units["brigade"].id, "referred")  # the county's brigade either way
    assert h.event_seq == events_before + 1  # no transfer; one event says why the copies changed
    detail = client.get(f"/api/v1/hazards/{hid}", headers=login(client, "brigade", device="desk")).json()
    moved = detail["timeline"][-1]
    assert moved["kind"] == "relocated" and moved["data"]["copies"][units["office-a"].id] == units["office-b"].id
    ccs = _ccs(session, hid)
    assert units["office-b"].id in ccs and units["police-b"].id in ccs
    assert units["office-a"].id not in ccs and units["police-a"].id not in ccs


def test_a_closed_hazard_passes_to_the_new_towns_office_as_it_is(client, session, units):
    """Closed, it is not transferred (nothing to act on), but its record goes with the premises: the old
    office no longer sees it, and a reopening reaches the body now answerable."""
    place, hid = _report(client, session, units, "grid-a-1-1", "rental", category="ebike_indoor")
    office_a = login(client, "office-a", device="desk")
    for body in ({"action": "accept"}, {"action": "close", "override_reason": "当场整改完毕"}):
        assert client.post(f"/api/v1/hazards/{hid}/actions", json=body, headers=office_a).status_code == 200, body
    closed_at = _hazard(session, hid).closed_at

    assert _move(client, place.id, units["grid-b-1-1"].id).status_code == 200

    h = _hazard(session, hid)
    assert (h.status, h.holder_unit_id, h.closed_at) == ("closed", units["office-b"].id, closed_at)
    hops = session.exec(select(Referral).where(Referral.hazard_id == hid).order_by(Referral.seq)).all()
    assert [(x.to_unit_id, x.via, x.outcome) for x in hops] == [
        (units["office-a"].id, "route", "closed"), (units["office-b"].id, "relocated", "closed")]
    assert hops[-1].ended_at is not None
    assert client.get(f"/api/v1/hazards/{hid}", headers=office_a).status_code == 404
    timeline = client.get(f"/api/v1/hazards/{hid}", headers=login(client, "office-b", device="desk")).json()["timeline"]
    assert [e["kind"] for e in timeline][-2:] == ["close", "relocated"]  # who closed it stays on record


def test_a_move_within_the_same_bodies_jurisdiction_transfers_nothing(client, session, units):
    place, hid = _report(client, session, units, "grid-a-1-1", "rental", category="ebike_indoor")
    seq = _hazard(session, hid).event_seq
    # another community of the same town: the same office and (no beat station set) the same police station
    assert _move(client, place.id, units["grid-a-2-1"].id, who="office-a").status_code == 200
    h = _hazard(session, hid)
    assert (h.holder_unit_id, h.event_seq, h.community_id) == (units["office-a"].id, seq, units["community-a-2"].id)


def test_a_move_the_new_town_cannot_take_is_refused_and_changes_nothing(client, session, units):
    grid_c = bare_town(session, units)
    place, hid = _report(client, session, units, "grid-a-1-1", "rental", category="ebike_indoor")
    seq = _hazard(session, hid).event_seq

    r = _move(client, place.id, grid_c.id)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"]["code"] == "routing_failed" and hid in body["error"]["message"]
    session.expire_all()
    assert session.get(Place, place.id).grid_id == units["grid-a-1-1"].id
    h = _hazard(session, hid)
    assert (h.holder_unit_id, h.town_id, h.event_seq) == (units["office-a"].id, units["town-a"].id, seq)

    # with no open hazard there, the same move is allowed
    office_a = login(client, "office-a", device="desk")
    for action in ({"action": "accept"}, {"action": "close", "override_reason": "当场整改完毕"}):
        assert client.post(f"/api/v1/hazards/{hid}/actions", json=action, headers=office_a).status_code == 200
    assert _move(client, place.id, grid_c.id).status_code == 200


def test_a_redrawn_boundary_imported_as_csv_moves_the_hazards_and_reports_what_it_cannot(client, session, units, tmp_path):
    from app.places.service import import_places_csv
    from app.referrals.policy import load_policy
    from app.referrals.service import Rules, load_calendar

    movable, hid = _report(client, session, units, "grid-a-1-1", "rental", category="ebike_indoor")
    grid_c = bare_town(session, units)
    stuck = Place(id="00000000-0000-4000-8000-00000000c0de", name="卡住", address="", grid_id=units["grid-a-2-1"].id,
                  town_id=units["town-a"].id, community_id=units["community-a-2"].id, place_class="rental")
    session.add(stuck)
    session.commit()
    stuck_hid = report(client, login(client, "office-a", device="desk"), stuck.id, NOW - timedelta(minutes=3),
                       photos=[], category="ebike_indoor")["hazard_id"]
    csv = tmp_path / "redrawn.csv"
    csv.write_text("id,name,address,grid,place_class\n"
                   f"{movable.id},{movable.name},{movable.address},grid-b-1-1,rental\n"
                   f"{stuck.id},{stuck.name},,{grid_c.code},rental\n", encoding="utf-8")

    rules = Rules(policy=load_policy(), calendar=load_calendar(session))
    rep = import_places_csv(session, csv, rules=rules)
    session.commit()

    assert rep.updated == 1 and [(e.row, e.column) for e in rep.errors] == [(3, "grid")]
    assert "routing_failed" not in rep.errors[0].reason and stuck_hid in rep.errors[0].reason
    assert _hazard(session, hid).holder_unit_id == units["office-b"].id
    session.expire_all()
    assert session.get(Place, stuck.id).grid_id == units["grid-a-2-1"].id
    assert _hazard(session, stuck_hid).holder_unit_id == units["office-a"].id


def test_a_push_that_moves_a_premises_to_another_beat_hands_its_police_hazard_to_that_station(client, session, units):
    """A community may lie on another police station's beat: a move between communities of one town
    changes the station, and a phone's place.upsert triggers it like the desk's PATCH."""
    from tests.helpers import op, push

    station = beat_station(session, units)
    place, hid = _report(client, session, units, "grid-b-1-1", "key_unit_3", category="blocked_exit")
    assert _hazard(session, hid).holder_unit_id == units["police-b"].id

    office_b = login(client, "office-b", device="desk-b")
    [res] = push(client, office_b, op("place.upsert", {"id": place.id, "name": place.name, "address": place.address,
                                                         "grid_id": units["grid-b-2-1"].id, "place_class": place.place_class}))
    assert res["status"] == "applied", res

    h = _hazard(session, hid)
    assert (h.holder_unit_id, h.status) == (station.id, "referred")
    assert _ccs(session, hid) == {units["office-b"].id: "routing"}  # the town office is the same: its copy stays
    hop = session.exec(select(Referral).where(Referral.hazard_id == hid).order_by(Referral.seq.desc())).first()
    assert (hop.from_unit_id, hop.to_unit_id, hop.via) == (units["police-b"].id, station.id, "transfer")
    assert units["community-b-2"].name in hop.reason and units["community-b-1"].name in hop.reason


def test_a_closed_hazard_reopened_after_the_move_goes_to_the_new_towns_office(client, session, units):
    place, hid = _report(client, session, units, "grid-a-1-1", "rental", category="ebike_indoor")
    office_a, office_b = login(client, "office-a", device="desk"), login(client, "office-b", device="desk")
    for body in ({"action": "accept"}, {"action": "close", "override_reason": "当场整改完毕"}):
        assert client.post(f"/api/v1/hazards/{hid}/actions", json=body, headers=office_a).status_code == 200
    assert _move(client, place.id, units["grid-b-1-1"].id).status_code == 200
    assert client.post(f"/api/v1/hazards/{hid}/actions", json={"action": "reopen", "reason": "复发"},
                       headers=office_a).status_code == 404  # no longer its premises

    r = client.post(f"/api/v1/hazards/{hid}/actions", json={"action": "reopen", "reason": "复发"}, headers=office_b)
    assert r.status_code == 200, r.text
    h = _hazard(session, hid)
    assert (h.status, h.holder_unit_id, h.town_id) == ("referred", units["office-b"].id, units["town-b"].id)
    hop = session.exec(select(Referral).where(Referral.hazard_id == hid).order_by(Referral.seq.desc())).first()
    assert (hop.to_unit_id, hop.ended_at, hop.outcome) == (units["office-b"].id, None, None)  # the live hop
    assert units["office-a"].id not in _ccs(session, hid)
    assert client.post(f"/api/v1/hazards/{hid}/actions", json={"action": "accept"}, headers=office_b).status_code == 200


def test_return_after_a_move_goes_to_the_new_towns_counterpart_of_the_sender(client, session, units):
    """An escalated hazard remembers who passed it up; after the move `return` reaches that body's
    counterpart in the new town, not the old town's body, and a move is not a hop to return."""
    place, hid = _report(client, session, units, "grid-a-1-1", "rental", category="ebike_indoor")
    office_a = login(client, "office-a", device="desk")
    r = client.post(f"/api/v1/hazards/{hid}/actions", json={"action": "escalate", "reason": "需要公安"}, headers=office_a)
    assert r.status_code == 200, r.text
    assert _hazard(session, hid).holder_unit_id == units["police-a"].id

    assert _move(client, place.id, units["grid-b-1-1"].id).status_code == 200
    h = _hazard(session, hid)
    assert (h.holder_unit_id, h.previous_holder_unit_id) == (units["police-b"].id, units["office-b"].id)

    r = client.post(f"/api/v1/hazards/{hid}/actions", json={"action": "return", "reason": "不属公安管辖"},
                    headers=login(client, "police-b", device="desk"))
    assert r.status_code == 200, r.text
    assert _hazard(session, hid).holder_unit_id == units["office-b"].id


def test_a_hazard_reopened_in_its_own_town_stays_with_its_holder(client, session, units):
    place, hid = _report(client, session, units, "grid-a-1-1", "rental", category="ebike_indoor")
    office_a = login(client, "office-a", device="desk")
    for body in ({"action": "accept"}, {"action": "close", "override_reason": "当场整改完毕"},
                 {"action": "reopen", "reason": "复发"}):
        assert client.post(f"/api/v1/hazards/{hid}/actions", json=body, headers=office_a).status_code == 200
    h = _hazard(session, hid)
    assert (h.status, h.holder_unit_id) == ("referred", units["office-a"].id)
    assert session.exec(select(Referral).where(Referral.hazard_id == hid)).all()[-1].via == "route"
