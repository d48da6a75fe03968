"""Review of the re-routing of a moved premises' hazards (to a higher tier where the policy wants one
at the new location), of pushes locking the premises FOR SHARE on PostgreSQL, and of a busy database
answered 503: the bugs it found, fixed, as regression tests, and the checks that held."""

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import select

from app.audit.models import HazardEvent
from app.audit.service import verify_all
from app.hazards.models import Referral
from app.org.models import UnitKind
from app.org.service import create_unit
from app.places.models import Place
from tests.conftest import login
from tests.helpers import op, place_of, push
from tests.referrals.test_relocation import _hazard, _move, _report
from tests.referrals.test_relocation_review import _act, _ccs, _ok, _queue_ids


def _patch(client, place_id: str, body: dict):
    return client.patch(f"/api/v1/places/{place_id}", json=body, headers=login(client, "admin", device="desk"))


def _rules(session):
    from app.referrals.policy import load_policy
    from app.referrals.service import Rules, load_calendar

    return Rules(policy=load_policy(), calendar=load_calendar(session))


def _chain_problems(session) -> list:
    return [p for p in verify_all(session) if not isinstance(p, int)]


def _violation_in_town_b(client, session, units):
    """A violation at a rental in town B (which holds enforcement power): held by town B's office."""
    place, hid = _report(client, session, units, "grid-b-1-1", "rental", category="blocked_exit", violation=True)
    assert (_hazard(session, hid).holder_unit_id, _hazard(session, hid).rule) == (units["office-b"].id,
                                                                                  "violation-town-enforcement")
    return place, hid


# -- bugs it found, fixed -----------------------------------------------------------------------


def _escalated_then_returned_violation_moved_to_town_a(client, session, units):
    """office-b -> escalate -> police-b -> return -> office-b (previous: police-b); moved to town A, where
    the policy wants the police: re-routed to police-a, the counterpart of that previous holder."""
    place, hid = _violation_in_town_b(client, session, units)
    _ok(client, hid, "office-b", {"action": "escalate", "reason": "需派出所处理"})
    _ok(client, hid, "police-b", {"action": "return", "reason": "镇街已获执法赋权"})
    assert _move(client, place.id, units["grid-a-1-1"].id).status_code == 200
    return hid, "police-a"


def _returned_by_the_brigade_then_reclassed_and_moved(client, session, units):
    """office-b -> police-b -> brigade -> return -> police-b (previous: the brigade); then one PATCH makes it
    a level 1 key unit in town A: re-routed to the brigade, which is also its previous holder."""
    place, hid = _report(client, session, units, "grid-b-1-1", "rental", category="ebike_indoor")
    _ok(client, hid, "office-b", {"action": "escalate", "reason": "需派出所处理"})
    _ok(client, hid, "police-b", {"action": "escalate", "reason": "需大队处理"})
    _ok(client, hid, "brigade", {"action": "return", "reason": "一般隐患"})
    r = _patch(client, place.id, {"grid_id": units["grid-a-1-1"].id, "place_class": "key_unit_1"})
    assert r.status_code == 200, r.text
    return hid, "brigade"


@pytest.mark.parametrize("scenario", [_escalated_then_returned_violation_moved_to_town_a,
                                      _returned_by_the_brigade_then_reclassed_and_moved])
def test_a_rerouted_hazard_is_never_its_own_previous_holder(client, session, units, scenario):
    hid, holder_code = scenario(client, session, units)
    h = _hazard(session, hid)
    assert h.holder_unit_id == units[holder_code].id  # the re-route itself is right
    hops_before = len(session.exec(select(Referral).where(Referral.hazard_id == hid)).all())
    r = _act(client, hid, holder_code, {"action": "return", "reason": "不归我们管"})
    h = _hazard(session, hid)
    hops = session.exec(select(Referral).where(Referral.hazard_id == hid).order_by(Referral.seq)).all()
    # a return either goes to another body or is refused; never a hop from a unit to itself
    assert [(x.from_unit_id, x.to_unit_id) for x in hops if x.from_unit_id == x.to_unit_id] == []
    assert r.status_code >= 400 or (h.holder_unit_id != units[holder_code].id and len(hops) == hops_before + 1)


def test_a_lock_timeout_at_commit_is_not_acknowledged_as_done(client, session, units, db, migrated_engine):
    if migrated_engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL: SQLite's write requests hold the write lock from BEGIN IMMEDIATE to COMMIT")
    from app.sync.feed import FEED_LOCK_CLASS

    place = place_of(session, units, "grid-a-1-1", "rental")  # a demo premises: nothing committed yet here
    headers = login(client, "admin", device="desk")
    with migrated_engine.connect() as other:  # another writer committing, holding the feed's lock meanwhile
        other.execute(sa.text("SELECT pg_advisory_xact_lock(:cls, ((CAST('changes' AS regclass))::oid::bigint"
                              " - 2147483648)::int)"), {"cls": FEED_LOCK_CLASS})
        db.connection.execute(sa.text("SET LOCAL lock_timeout = '300ms'"))  # not the 10 s of production
        r = client.patch(f"/api/v1/places/{place.id}", json={"grid_id": units["grid-b-1-1"].id}, headers=headers)
        other.rollback()
    session.expire_all()
    moved = session.get(Place, place.id).grid_id == units["grid-b-1-1"].id
    # the commit (the change feed's lock) timed out: the client must hear so, not a 200 for a rolled-back move
    assert (r.status_code, r.json()["error"]["code"], moved) == (503, "busy", False), (r.status_code, r.text, moved)


def test_a_premises_moved_to_another_county_takes_its_brigade_hazard_to_that_countys_brigade(client, session,
                                                                                            units):
    county = create_unit(session, code="county-x", name="邻县", kind=UnitKind.county, parent=None)
    brigade_x = create_unit(session, code="brigade-x", name="邻县消防救援大队", kind=UnitKind.brigade, parent=county)
    town = create_unit(session, code="town-x", name="邻镇", kind=UnitKind.town, parent=county)
    create_unit(session, code="office-x", name="邻镇办", kind=UnitKind.town_office, parent=town)
    create_unit(session, code="police-x", name="邻镇派出所", kind=UnitKind.police_station, parent=town)
    community = create_unit(session, code="community-x-1", name="邻社区", kind=UnitKind.community, parent=town)
    grid = create_unit(session, code="grid-x-1-1", name="邻网格", kind=UnitKind.grid, parent=community)
    session.commit()
    place, hid = _report(client, session, units, "grid-a-1-1", "rental", category="ebike_indoor", severity="major")
    assert _move(client, place.id, grid.id).status_code == 200
    h = _hazard(session, hid)
    assert h.town_id == town.id
    assert h.holder_unit_id == brigade_x.id, "held by the brigade of the county the premises left"



def test_a_hazard_rerouted_by_a_new_class_is_filed_under_that_class(client, session, units):
    place, hid = _report(client, session, units, "grid-a-1-1", "key_unit_3", category="blocked_exit")
    r = _patch(client, place.id, {"grid_id": units["grid-b-1-1"].id, "place_class": "key_unit_1"})
    assert r.status_code == 200, r.text
    items = client.get("/api/v1/queue", headers=login(client, "brigade", device="desk")).json()["items"]
    assert [i["place"]["place_class"] for i in items if i["id"] == hid] == ["key_unit_1"]
    assert hid in _queue_ids(client, "brigade", place_class="key_unit_1")
    assert _hazard(session, hid).place_class == "key_unit_1"


def test_the_chain_records_a_reroute_as_fully_as_a_routing(client, session, units):
    place, hid = _violation_in_town_b(client, session, units)
    assert _move(client, place.id, units["grid-a-1-1"].id).status_code == 200
    h = _hazard(session, hid)
    ev = session.exec(select(HazardEvent).where(HazardEvent.hazard_id == hid, HazardEvent.kind == "relocated")).one()
    assert ev.data.get("rule") == h.rule
    assert (ev.data.get("reason_zh"), ev.data.get("policy_version")) == (h.reason_zh, h.policy_version)
    assert units["office-a"].id in (ev.data.get("cc") or [])

# -- checks that hold ---------------------------------------------------------------------------------


def test_a_patch_that_changes_class_and_grid_at_once_reroutes_by_the_new_class(client, session, units):
    place, hid = _report(client, session, units, "grid-a-1-1", "key_unit_3", category="blocked_exit")
    assert _hazard(session, hid).holder_unit_id == units["police-a"].id
    r = _patch(client, place.id, {"grid_id": units["grid-b-1-1"].id, "place_class": "key_unit_1"})
    assert r.status_code == 200, r.text
    h = _hazard(session, hid)
    assert (h.tier, h.holder_unit_id, h.rule, h.status) == ("brigade", units["brigade"].id, "key-unit-brigade",
                                                             "referred")
    assert (h.previous_holder_unit_id, h.listed_supervision) == (None, False)
    assert _ccs(session, hid) == {units["office-b"].id: True}  # the rule's copy, in the new town only
    hop = session.exec(select(Referral).where(Referral.hazard_id == hid).order_by(Referral.seq.desc())).first()
    assert (hop.from_unit_id, hop.to_unit_id, hop.tier) == (units["police-a"].id, units["brigade"].id, "brigade")
    assert hid in _queue_ids(client, "brigade") and hid in _queue_ids(client, "office-b", cc="true")
    for old in ("police-a", "office-a"):
        assert _act(client, hid, old, {"action": "accept"}).status_code == 404
    assert _chain_problems(session) == []


def test_a_patch_that_lowers_the_class_while_moving_keeps_the_tier(client, session, units):
    place, hid = _report(client, session, units, "grid-a-1-1", "key_unit_3", category="blocked_exit")
    assert _patch(client, place.id, {"grid_id": units["grid-b-1-1"].id, "place_class": "rental"}).status_code == 200
    h = _hazard(session, hid)
    assert (h.tier, h.holder_unit_id, h.rule) == ("police_station", units["police-b"].id, "police-supervised")


def test_a_rerouted_hazard_cannot_be_returned_across_the_move(client, session, units):
    place, hid = _violation_in_town_b(client, session, units)
    assert _move(client, place.id, units["grid-a-1-1"].id).status_code == 200
    r = _act(client, hid, "police-a", {"action": "return", "reason": "不归我们管"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_previous_holder", r.text
    assert _hazard(session, hid).holder_unit_id == units["police-a"].id


def test_the_sweep_escalates_a_rerouted_hazard_from_its_new_tier(client, session, units):
    from app.referrals.service import sweep

    place, hid = _violation_in_town_b(client, session, units)
    assert _move(client, place.id, units["grid-a-1-1"].id).status_code == 200
    h = _hazard(session, hid)
    assert h.escalate_at == h.ack_due  # a fresh acknowledgement clock for the police
    [done] = sweep(session, _rules(session), h.escalate_at + timedelta(minutes=1))
    session.commit()
    assert (done.from_tier, done.to_tier) == ("police_station", "brigade")
    h = _hazard(session, hid)
    assert (h.holder_unit_id, h.previous_holder_unit_id) == (units["brigade"].id, units["police-a"].id)
    _ok(client, hid, "brigade", {"action": "return", "reason": "派出所可处理"})
    assert _hazard(session, hid).holder_unit_id == units["police-a"].id
    assert _chain_problems(session) == []


def test_a_reroute_by_a_pushed_place_upsert_is_recorded_as_the_pushers(client, session, units):
    place, hid = _violation_in_town_b(client, session, units)
    admin = login(client, "admin", device="admin-phone")
    [res] = push(client, admin, op("place.upsert", {"id": place.id, "name": place.name, "address": place.address,
                                                     "grid_id": units["grid-a-1-1"].id,
                                                     "place_class": place.place_class}))
    assert res["status"] == "applied", res
    h = _hazard(session, hid)
    assert (h.tier, h.holder_unit_id, h.rule) == ("police_station", units["police-a"].id, "violation-to-police")
    ev = session.exec(select(HazardEvent).where(HazardEvent.hazard_id == hid, HazardEvent.kind == "relocated")).one()
    assert ev.actor_unit_id == units["county"].id and ev.device_id is not None
    assert ev.data["rule"] == "violation-to-police"


def test_a_reroute_by_csv_import_takes_duplicates_along_and_they_can_be_merged(client, session, units, tmp_path):
    from app.places.service import import_places_csv

    place, first = _violation_in_town_b(client, session, units)
    _, dup = _report(client, session, units, "grid-b-1-1", "rental", category="blocked_exit", violation=True)
    assert _hazard(session, dup).duplicate_of_id == first
    csv = tmp_path / "redrawn.csv"
    csv.write_text(f"id,name,address,grid,place_class\n{place.id},{place.name},{place.address},grid-a-1-1,rental\n",
                   encoding="utf-8")
    rep = import_places_csv(session, csv, rules=_rules(session))
    session.commit()
    assert (rep.updated, rep.errors) == (1, [])
    for hid in (first, dup):
        h = _hazard(session, hid)
        assert (h.tier, h.holder_unit_id, h.rule) == ("police_station", units["police-a"].id, "violation-to-police")
    _ok(client, dup, "police-a", {"action": "merge", "merge_into_id": first})
    assert _hazard(session, dup).status == "merged"
    assert _chain_problems(session) == []


def test_a_move_blocked_by_a_lock_is_503_and_changes_nothing(client, session, units, db, migrated_engine):
    if migrated_engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL: SQLite's writers queue on one lock, which the test's own transaction holds")
    place = place_of(session, units, "grid-a-1-1", "rental")
    headers = login(client, "admin", device="desk")
    db.connection.execute(sa.text("SET LOCAL lock_timeout = '200ms'"))
    with migrated_engine.connect() as stuck:  # a move (or an admin's psql session) holding the premises
        stuck.execute(sa.text("SELECT id FROM places WHERE id = :id FOR UPDATE"), {"id": place.id})
        r = client.patch(f"/api/v1/places/{place.id}", json={"grid_id": units["grid-b-1-1"].id}, headers=headers)
        stuck.rollback()
    assert (r.status_code, r.headers.get("retry-after"), r.json()["error"]["code"]) == (503, "1", "busy"), r.text
    session.expire_all()
    assert session.get(Place, place.id).grid_id == units["grid-a-1-1"].id
    again = client.patch(f"/api/v1/places/{place.id}", json={"grid_id": units["grid-b-1-1"].id}, headers=headers)
    assert again.status_code == 200 and again.json()["town_id"] == units["town-b"].id

