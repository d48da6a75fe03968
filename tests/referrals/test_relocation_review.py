"""Review of the relocation change (a premises moved to another town / police beat takes its open
hazards along): the bugs it found, fixed, as regression tests."""

from datetime import timedelta

import pytest
from sqlmodel import select

from app.hazards.models import Hazard, HazardCC, Referral
from app.org.models import OrgUnit, UnitKind
from app.org.service import create_unit
from app.places.models import Place
from tests.conftest import login
from tests.helpers import op, place_of, push, report, uid

from tests.referrals.test_relocation import NOW, _hazard, _move, _report, bare_town, beat_station


def _act(client, hid: str, who: str, body: dict):
    return client.post(f"/api/v1/hazards/{hid}/actions", json=body, headers=login(client, who, device="desk"))


def _ok(client, hid: str, who: str, body: dict):
    r = _act(client, hid, who, body)
    assert r.status_code == 200, (body, r.text)
    return r.json()


def _ccs(session, hazard_id: str) -> dict[str, bool]:
    session.expire_all()
    return {cc.unit_id: cc.is_open for cc in session.exec(select(HazardCC).where(HazardCC.hazard_id == hazard_id))}


def _town_of(session, unit_id: str) -> str | None:
    return session.get(OrgUnit, unit_id).town_id


def _queue_ids(client, who: str, **params) -> set[str]:
    r = client.get("/api/v1/queue", params=params, headers=login(client, who, device="desk"))
    assert r.status_code == 200, r.text
    return {i["id"] for i in r.json()["items"]}


DEADLINE = (NOW + timedelta(days=20)).isoformat()


# -- regression: what holds -----------------------------------------------------------------


@pytest.mark.parametrize("steps,status_before", [
    ([{"action": "accept"}], "accepted"),
    ([{"action": "accept"}, {"action": "order_rectification", "deadline": DEADLINE}], "rectifying"),
    ([{"action": "accept"}, {"action": "order_rectification", "deadline": DEADLINE},
      {"action": "owner_reported_fixed"}], "reinspection_due"),
])
def test_every_open_status_is_handed_to_the_new_town(client, session, units, steps, status_before):
    place, hid = _report(client, session, units, "grid-a-1-1", "rental", category="ebike_indoor")
    for body in steps:
        _ok(client, hid, "office-a", body)
    assert _hazard(session, hid).status == status_before
    assert _move(client, place.id, units["grid-b-1-1"].id).status_code == 200
    h = _hazard(session, hid)
    assert (h.holder_unit_id, h.status, h.town_id) == (units["office-b"].id, "referred", units["town-b"].id)
    assert h.escalate_at is not None and h.next_due == h.ack_due  # a fresh acknowledgement clock
    assert hid in _queue_ids(client, "office-b") and hid not in _queue_ids(client, "office-a")


def test_duplicates_move_and_merged_or_dismissed_ones_stay_terminal(client, session, units):
    place, first = _report(client, session, units, "grid-a-1-1", "rental", category="ebike_indoor")
    _, dup = _report(client, session, units, "grid-a-1-1", "rental", category="ebike_indoor")
    _, merged = _report(client, session, units, "grid-a-1-1", "rental", category="ebike_indoor")
    _, dismissed = _report(client, session, units, "grid-a-1-1", "rental", category="lpg_misuse")
    assert _hazard(session, dup).duplicate_of_id == first
    _ok(client, merged, "office-a", {"action": "merge", "merge_into_id": first})
    _ok(client, dismissed, "office-a", {"action": "dismiss", "reason": "误报"})

    assert _move(client, place.id, units["grid-b-1-1"].id).status_code == 200

    assert _hazard(session, first).holder_unit_id == units["office-b"].id
    d = _hazard(session, dup)
    assert (d.holder_unit_id, d.duplicate_of_id) == (units["office-b"].id, first)
    assert (_hazard(session, merged).status, _hazard(session, merged).holder_unit_id) == ("merged", units["office-a"].id)
    x = _hazard(session, dismissed)
    assert (x.status, x.escalate_at) == ("dismissed", None)  # nothing restarted on a terminal hazard


def test_moved_there_and_back_ends_with_the_first_office_and_a_sound_chain(client, session, units, db):
    from app.audit.service import verify_all

    place, hid = _report(client, session, units, "grid-a-1-1", "key_unit_3", category="blocked_exit")
    assert _move(client, place.id, units["grid-b-1-1"].id).status_code == 200
    assert _move(client, place.id, units["grid-a-1-1"].id).status_code == 200
    h = _hazard(session, hid)
    assert (h.holder_unit_id, h.town_id) == (units["police-a"].id, units["town-a"].id)
    assert _ccs(session, hid) == {units["office-a"].id: True}
    hops = session.exec(select(Referral).where(Referral.hazard_id == hid).order_by(Referral.seq)).all()
    assert [x.to_unit_id for x in hops] == [units["police-a"].id, units["police-b"].id, units["police-a"].id]
    problems = [p for p in verify_all(session) if not isinstance(p, int)]
    assert problems == []


def test_an_escalated_hazard_goes_to_the_police_of_the_new_town_and_the_office_copy_follows(client, session, units):
    place, hid = _report(client, session, units, "grid-a-1-1", "rental", category="ebike_indoor")
    _ok(client, hid, "office-a", {"action": "escalate", "reason": "需派出所处理"})
    assert _hazard(session, hid).holder_unit_id == units["police-a"].id
    assert _move(client, place.id, units["grid-b-1-1"].id).status_code == 200
    h = _hazard(session, hid)
    assert (h.tier, h.holder_unit_id) == ("police_station", units["police-b"].id)
    assert _ccs(session, hid) == {units["office-b"].id: True}
    assert hid in _queue_ids(client, "office-b", cc="true")
    assert hid not in _queue_ids(client, "office-a", cc="true")
    assert hid in _queue_ids(client, "police-b") and hid not in _queue_ids(client, "police-a")


def test_a_replayed_place_upsert_is_a_duplicate_and_does_not_move_twice(client, session, units):
    station = beat_station(session, units)
    place, hid = _report(client, session, units, "grid-b-1-1", "key_unit_3", category="blocked_exit")
    office_b = login(client, "office-b", device="desk-b")
    move = op("place.upsert", {"id": place.id, "name": place.name, "address": place.address,
                               "grid_id": units["grid-b-2-1"].id, "place_class": place.place_class})
    [first] = push(client, office_b, move)
    assert first["status"] == "applied"
    seq = _hazard(session, hid).event_seq
    # the desk moves it back; the phone, unsure its push arrived, re-sends the same op
    assert _move(client, place.id, units["grid-b-1-1"].id).status_code == 200
    assert _hazard(session, hid).holder_unit_id == units["police-b"].id
    seq = _hazard(session, hid).event_seq
    [again] = push(client, office_b, move)
    assert again["status"] == "duplicate" and again["result"] == first["result"]
    h = _hazard(session, hid)
    assert (h.holder_unit_id, h.event_seq, h.grid_id) == (units["police-b"].id, seq, units["grid-b-1-1"].id)
    # the same op twice in one batch: applied once
    other = op("place.upsert", {"id": place.id, "name": place.name, "address": place.address,
                                "grid_id": units["grid-b-2-1"].id, "place_class": place.place_class})
    results = push(client, office_b, other, other)
    assert [r["status"] for r in results] == ["applied", "duplicate"]
    hops = session.exec(select(Referral).where(Referral.hazard_id == hid)).all()
    assert len(hops) == 4 and _hazard(session, hid).holder_unit_id == station.id


def test_pull_tells_the_old_office_and_the_old_grid_the_hazard_left(client, session, units):
    place, hid = _report(client, session, units, "grid-a-1-1", "key_unit_3", category="blocked_exit")
    heads = {who: login(client, who, device=f"pull-{who}") for who in ("office-a", "police-a", "worker-a1", "office-b", "police-b")}
    cursors = {}
    for who, head in heads.items():
        r = client.get("/api/v1/sync/pull", headers=head, params={"limit": 1000})
        while True:
            body = r.json()
            if not body["more"]:
                break
            r = client.get("/api/v1/sync/pull", headers=head, params={"cursor": body["cursor"], "limit": 1000})
        cursors[who] = body["cursor"]

    assert _move(client, place.id, units["grid-b-1-1"].id).status_code == 200

    def news(who):
        r = client.get("/api/v1/sync/pull", headers=heads[who], params={"cursor": cursors[who], "limit": 1000})
        assert r.status_code == 200, r.text
        return [(c["deleted"], (c["data"] or {}).get("holder_org_unit_id")) for c in r.json()["changes"]
                if c["type"] == "hazard" and c["id"] == hid]

    for who in ("office-a", "police-a", "worker-a1"):
        assert news(who) and news(who)[-1][0] is True, who  # last word: gone
    for who in ("office-b", "police-b"):
        assert news(who)[-1] == (False, units["police-b"].id), who


def test_csv_rows_touching_one_premises_apply_in_order(client, session, units, tmp_path):
    from app.places.service import import_places_csv
    from app.referrals.policy import load_policy
    from app.referrals.service import Rules, load_calendar

    place, hid = _report(client, session, units, "grid-a-1-1", "key_unit_3", category="blocked_exit")
    grid_c = bare_town(session, units)
    csv = tmp_path / "rows.csv"
    csv.write_text("id,name,address,grid,place_class\n"
                   f"{place.id},{place.name},{place.address},grid-b-1-1,key_unit_3\n"
                   f"{place.id},{place.name},{place.address},{grid_c.code},key_unit_3\n"
                   f"{place.id},{place.name},{place.address},grid-a-2-1,key_unit_3\n", encoding="utf-8")
    rep = import_places_csv(session, csv, rules=Rules(policy=load_policy(), calendar=load_calendar(session)))
    session.commit()
    assert rep.updated == 2 and [(e.row, e.column) for e in rep.errors] == [(3, "grid")]
    h = _hazard(session, hid)
    assert (h.holder_unit_id, h.town_id, h.grid_id) == (units["police-a"].id, units["town-a"].id, units["grid-a-2-1"].id)
    assert _ccs(session, hid) == {units["office-a"].id: True}
    session.expire_all()
    assert session.get(Place, place.id).grid_id == units["grid-a-2-1"].id


# -- bugs -----------------------------------------------------------------------------------


def test_return_after_a_relocation_does_not_send_the_hazard_back_to_the_old_town(client, session, units):
    place, hid = _report(client, session, units, "grid-a-1-1", "rental", category="ebike_indoor")
    assert _move(client, place.id, units["grid-b-1-1"].id).status_code == 200
    r = _act(client, hid, "office-b", {"action": "return", "reason": "不归我们管"})
    h = _hazard(session, hid)
    # either refused, or the holder stays a body of the premises' own town
    assert r.status_code >= 400 or _town_of(session, h.holder_unit_id) == units["town-b"].id, (
        f"returned to {h.holder_unit_id} (office-a: {units['office-a'].id}) for a premises in town B")


def test_return_of_a_relocated_escalated_hazard_goes_to_the_new_towns_office(client, session, units):
    place, hid = _report(client, session, units, "grid-a-1-1", "rental", category="ebike_indoor")
    _ok(client, hid, "office-a", {"action": "escalate", "reason": "需派出所处理"})
    assert _move(client, place.id, units["grid-b-1-1"].id).status_code == 200
    r = _act(client, hid, "police-b", {"action": "return", "reason": "一般隐患，退回镇街"})
    assert r.status_code == 200, r.text
    h = _hazard(session, hid)
    assert (h.tier, h.holder_unit_id) == ("town_office", units["office-b"].id)


def test_reopening_a_moved_police_hazard_drops_the_old_towns_copy(client, session, units):
    place, hid = _report(client, session, units, "grid-a-1-1", "key_unit_3", category="blocked_exit")
    _ok(client, hid, "police-a", {"action": "accept"})
    _ok(client, hid, "police-a", {"action": "close", "override_reason": "当场整改"})
    assert _move(client, place.id, units["grid-b-1-1"].id).status_code == 200
    _ok(client, hid, "office-b", {"action": "reopen", "reason": "复发"})
    h = _hazard(session, hid)
    assert h.holder_unit_id == units["police-b"].id  # handed on: this part works
    assert units["office-a"].id not in _ccs(session, hid)
    assert hid not in _queue_ids(client, "office-a", cc="true")
    assert _act(client, hid, "office-a", {"action": "accept"}).status_code == 404


def test_reopening_a_moved_brigade_hazard_copies_the_new_town_not_the_old(client, session, units):
    place, hid = _report(client, session, units, "grid-a-1-1", "rental", category="ebike_indoor", severity="major")
    _ok(client, hid, "brigade", {"action": "accept"})
    # a listed hazard closes on photos only
    _ok(client, hid, "brigade", {"action": "record_reinspection", "rectified": True, "photos": ["e" * 64]})
    assert _move(client, place.id, units["grid-b-1-1"].id).status_code == 200
    _ok(client, hid, "brigade", {"action": "reopen", "reason": "复发"})
    ccs = _ccs(session, hid)
    assert units["office-a"].id not in ccs and units["police-a"].id not in ccs
    assert units["office-b"].id in ccs and units["police-b"].id in ccs


def test_reopening_after_a_move_to_another_beat_goes_to_that_beats_station(client, session, units):
    station = beat_station(session, units)
    place, hid = _report(client, session, units, "grid-b-1-1", "key_unit_3", category="blocked_exit")
    _ok(client, hid, "police-b", {"action": "accept"})
    _ok(client, hid, "police-b", {"action": "close", "override_reason": "当场整改"})
    assert _move(client, place.id, units["grid-b-2-1"].id, who="office-b").status_code == 200
    _ok(client, hid, "office-b", {"action": "reopen", "reason": "复发"})
    assert _hazard(session, hid).holder_unit_id == station.id


def test_reopen_after_a_manual_cross_town_transfer_is_not_called_a_relocation(client, session, units):
    place, hid = _report(client, session, units, "grid-a-1-1", "rental", category="ebike_indoor")
    _ok(client, hid, "office-a", {"action": "transfer", "to_unit_id": units["office-b"].id, "reason": "属临江街道管辖"})
    _ok(client, hid, "office-b", {"action": "accept"})
    _ok(client, hid, "office-b", {"action": "close", "override_reason": "已整改"})
    detail = _ok(client, hid, "office-b", {"action": "reopen", "reason": "复发"})
    assert "relocated" not in [e["kind"] for e in detail["timeline"]]
    assert _hazard(session, hid).holder_unit_id == units["office-b"].id  # reopen goes back to its last holder


def test_a_hazard_held_by_another_station_of_the_old_town_follows_the_premises(client, session, units):
    second = create_unit(session, code="police-a-2", name="第二派出所", kind=UnitKind.police_station, parent=units["town-a"])
    session.commit()
    place, hid = _report(client, session, units, "grid-a-1-1", "key_unit_3", category="blocked_exit")
    _ok(client, hid, "police-a", {"action": "transfer", "to_unit_id": second.id, "reason": "辖区调整"})
    assert _move(client, place.id, units["grid-b-1-1"].id).status_code == 200
    h = _hazard(session, hid)
    assert _town_of(session, h.holder_unit_id) == units["town-b"].id, "held by police-a-2 of town A"
    assert second.id not in _ccs(session, hid)


def test_a_violation_moved_to_a_town_without_enforcement_power_goes_to_an_enforcement_body(client, session, units):
    place, hid = _report(client, session, units, "grid-b-1-1", "rental", category="blocked_exit", violation=True)
    h = _hazard(session, hid)
    assert (h.holder_unit_id, h.rule) == (units["office-b"].id, "violation-town-enforcement")
    assert _move(client, place.id, units["grid-a-1-1"].id).status_code == 200
    h = _hazard(session, hid)
    assert h.tier == "police_station" and h.holder_unit_id == units["police-a"].id
    # the record says why it is there now: the policy's rule at the new location, with its copy
    assert (h.rule, h.status) == ("violation-to-police", "referred")
    assert _ccs(session, hid) == {units["office-a"].id: True}
    hop = session.exec(select(Referral).where(Referral.hazard_id == hid).order_by(Referral.seq.desc())).first()
    assert (hop.from_unit_id, hop.to_unit_id, hop.tier) == (units["office-b"].id, units["police-a"].id, "police_station")
    timeline = client.get(f"/api/v1/hazards/{hid}", headers=login(client, "police-a", device="desk")).json()["timeline"]
    assert timeline[-1]["kind"] == "relocated" and timeline[-1]["data"]["rule"] == "violation-to-police"
    assert hid in _queue_ids(client, "police-a") and hid in _queue_ids(client, "office-a", cc="true")


def test_a_violation_the_police_hold_stays_with_the_police_in_a_town_with_enforcement_power(client, session, units):
    """Never lower: the new town's office could take it by the policy, but no one re-decides a hazard
    downwards on a move; the station of the new town takes it over."""
    place, hid = _report(client, session, units, "grid-a-1-1", "rental", category="blocked_exit", violation=True)
    assert (_hazard(session, hid).holder_unit_id, _hazard(session, hid).rule) == (units["police-a"].id,
                                                                                  "violation-to-police")
    assert _move(client, place.id, units["grid-b-1-1"].id).status_code == 200
    h = _hazard(session, hid)
    assert (h.tier, h.holder_unit_id, h.rule) == ("police_station", units["police-b"].id, "violation-to-police")


def test_a_closed_violation_moved_to_a_town_without_enforcement_power_reopens_with_the_police(client, session, units):
    place, hid = _report(client, session, units, "grid-b-1-1", "rental", category="blocked_exit", violation=True)
    _ok(client, hid, "office-b", {"action": "accept"})
    _ok(client, hid, "office-b", {"action": "close", "override_reason": "当场整改完毕"})
    assert _move(client, place.id, units["grid-a-1-1"].id).status_code == 200
    h = _hazard(session, hid)
    assert (h.status, h.tier, h.holder_unit_id, h.rule) == ("closed", "police_station", units["police-a"].id,
                                                            "violation-to-police")
    assert _ok(client, hid, "office-a", {"action": "reopen", "reason": "复查发现仍堵塞"})["status"] == "referred"
    h = _hazard(session, hid)
    assert (h.tier, h.holder_unit_id) == ("police_station", units["police-a"].id)


def test_a_move_that_raises_a_hazard_to_a_tier_the_new_town_lacks_is_refused(client, session, units):
    grid_c = bare_town(session, units)  # no office, no police station, and no enforcement power
    create_unit(session, code="office-c", name="新设镇办", kind=UnitKind.town_office,
                parent=session.get(OrgUnit, grid_c.town_id))
    session.commit()
    place, hid = _report(client, session, units, "grid-b-1-1", "rental", category="blocked_exit", violation=True)
    r = _move(client, place.id, grid_c.id)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "routing_failed" and hid in r.json()["error"]["message"]
    h = _hazard(session, hid)
    assert (h.holder_unit_id, h.town_id) == (units["office-b"].id, units["town-b"].id)


def test_a_report_planned_before_a_move_and_written_after_it_follows_the_premises(client, session, units, db):
    from app.auth.models import Device, User
    from app.auth.scope import scope_for
    from app.referrals.policy import load_policy
    from app.referrals.service import Rules, load_calendar
    from app.sync import service as sync
    from app.sync.schemas import Op
    from tests.helpers import hazard_data

    place = place_of(session, units, "grid-a-1-1", "rental")
    login(client, "admin", device="phone-admin")
    admin = session.exec(select(User).where(User.username == "admin")).one()
    device = session.exec(select(Device).where(Device.user_id == admin.id)).first()
    rules = Rules(policy=load_policy(), calendar=load_calendar(session))
    ops = [Op.model_validate(op("hazard.report", hazard_data(place.id, NOW - timedelta(minutes=1), photos=[])))]
    with db.session() as reader:
        ctx = sync.PushContext(session=reader, rules=rules, scope=scope_for(reader, admin), user=admin, device=device,
                               now=NOW)
        plan = sync.plan_push(ctx, ops)  # phase 1: routed to office-a
        reader.commit()
        assert _move(client, place.id, units["grid-b-1-1"].id).status_code == 200  # another request commits a move
        with db.session(write=True) as writer:
            [res] = sync.apply_push(ctx, ops, plan, writer)
            writer.commit()
    assert res.status == "applied"
    h = _hazard(session, res.result["hazard_id"])
    assert (h.town_id, h.holder_unit_id) == (units["town-b"].id, units["office-b"].id)

