"""A premises' class decides which tier supervises it (DOMAIN.md, "Who supervises which premises").

Reclassed to a class a higher tier supervises (a key unit designated, an entry error fixed), its hazards
go to that tier, with the rule on record and the `reclassified` event saying why; reclassed down, they
stay where they are (the holder may return or transfer them by hand). Lowering a premises' supervising
tier is for the body that supervises it now (or one above) and the county admin only: a grid worker or a
town office that turns a key unit into a rental would send every future hazard there away from the
brigade."""

from sqlmodel import select

from app.audit.models import HazardEvent
from app.hazards.models import Referral
from app.org.models import UnitKind
from app.org.service import create_unit
from app.places.models import Place
from tests.conftest import login
from tests.helpers import hazard_data, op, place_of, push
from tests.referrals.test_relocation import NOW, _hazard, _report
from tests.referrals.test_relocation_review import _act, _ccs, _ok, _queue_ids
from tests.referrals.test_relocation_reroute_review import _chain_problems, _rules


def _reclass(client, place_id: str, place_class: str, who: str = "admin", **more):
    return client.patch(f"/api/v1/places/{place_id}", json={"place_class": place_class, **more},
                        headers=login(client, who, device="desk"))


def _events(session, hazard_id: str, kind: str) -> list[HazardEvent]:
    session.expire_all()
    return session.exec(select(HazardEvent).where(HazardEvent.hazard_id == hazard_id, HazardEvent.kind == kind)
                        .order_by(HazardEvent.seq)).all()


def _class_of(session, place_id: str) -> str:
    session.expire_all()
    return session.get(Place, place_id).place_class


def _hops(session, hazard_id: str) -> list[Referral]:
    session.expire_all()
    return session.exec(select(Referral).where(Referral.hazard_id == hazard_id).order_by(Referral.seq)).all()


# -- the pure core: which tier supervises a class ---------------------------------------------------


def test_the_supervising_tier_of_each_class_is_the_policys():
    from app.referrals.policy import Rule, load_policy
    from app.referrals.routing import supervising_tier

    policy = load_policy()
    want = {"key_unit_1": "brigade", "key_unit_2": "brigade", "key_unit_3": "police_station",
            "police_list": "police_station", "nine_small": "town_office", "three_in_one": "town_office",
            "rental": "town_office", "self_built": "town_office", "crowded": "town_office",
            "residential": "town_office", "other": "town_office"}  # DOMAIN.md, written out by hand
    assert {c: supervising_tier(c, policy) for c in want} == want
    assert supervising_tier("castle", policy) is None
    # a rule about what was found (a category) does not say who supervises the premises
    custom = policy.model_copy(update={"rules": [
        Rule(id="wiring-to-police", category=["improvised_wiring"], tier="police_station", reason_zh="x",
             reason_en="x"),
        *policy.rules]})
    assert (supervising_tier("rental", custom), supervising_tier("key_unit_1", custom)) == ("town_office", "brigade")


# -- raised: the hazards go up --------------------------------------------------------------------


def test_a_rental_made_a_level_1_key_unit_sends_its_open_hazard_to_the_brigade(client, session, units):
    place, hid = _report(client, session, units, "grid-a-1-1", "rental", category="ebike_indoor")
    _ok(client, hid, "office-a", {"action": "accept"})
    before = _hazard(session, hid)
    assert (before.holder_unit_id, before.status, before.rule) == (units["office-a"].id, "accepted",
                                                                   "town-office-default")
    order_due, escalate_at = before.order_due, before.escalate_at

    r = _reclass(client, place.id, "key_unit_1", who="office-a")  # raising: open to whoever edits premises
    assert r.status_code == 200, r.text

    h = _hazard(session, hid)
    assert (h.tier, h.holder_unit_id, h.status) == ("brigade", units["brigade"].id, "referred")
    assert (h.rule, h.place_class, h.listed_supervision) == ("key-unit-brigade", "key_unit_1", False)
    assert h.reason_en.startswith("Level 1/2 fire safety key unit") and h.policy_version == _rules(session).policy.version
    # every clock restarted for the new holder: it reports in (报到) on a fresh acknowledgement clock
    assert order_due is not None and escalate_at == order_due  # it was the office's order clock that ran
    assert h.ack_due is not None and h.escalate_at == h.ack_due and h.order_due is None
    assert h.previous_holder_unit_id is None  # a re-route by the policy is not a hop anyone may `return`
    [ev] = _events(session, hid, "reclassified")
    assert (ev.data["from_class"], ev.data["to_class"]) == ("rental", "key_unit_1")
    assert (ev.data["rule"], ev.data["to_unit_id"], ev.data["policy_version"]) == ("key-unit-brigade",
                                                                                   units["brigade"].id,
                                                                                   h.policy_version)
    assert ev.actor_unit_id == units["office-a"].id
    hops = _hops(session, hid)
    assert [(x.from_unit_id, x.to_unit_id, x.tier, x.outcome) for x in hops] == [
        (None, units["office-a"].id, "town_office", "transferred"),
        (units["office-a"].id, units["brigade"].id, "brigade", None)]
    assert "类别" in hops[-1].reason
    assert _ccs(session, hid) == {units["office-a"].id: True}  # the rule's copy to the town
    assert hid in _queue_ids(client, "brigade")
    assert _act(client, hid, "office-a", {"action": "order_rectification"}).status_code == 403
    assert _chain_problems(session) == []


def test_a_grid_worker_raising_a_class_sends_the_hazards_to_the_police(client, session, units):
    place, hid = _report(client, session, units, "grid-a-1-1", "rental", category="blocked_exit")
    r = _reclass(client, place.id, "police_list", who="worker-a1")
    assert r.status_code == 200, r.text
    h = _hazard(session, hid)
    assert (h.tier, h.holder_unit_id, h.rule) == ("police_station", units["police-a"].id, "police-supervised")
    assert len(_events(session, hid, "reclassified")) == 1


def test_only_hazards_below_the_new_tier_move_and_none_goes_down(client, session, units):
    place, at_office = _report(client, session, units, "grid-a-1-1", "rental", category="ebike_indoor")
    _, major = _report(client, session, units, "grid-a-1-1", "rental", category="flammables_storage",
                       severity="major")
    assert _hazard(session, major).holder_unit_id == units["brigade"].id
    assert _reclass(client, place.id, "key_unit_3").status_code == 200
    assert _hazard(session, at_office).holder_unit_id == units["police-a"].id
    m = _hazard(session, major)
    assert (m.tier, m.holder_unit_id, m.rule) == ("brigade", units["brigade"].id, "major-to-brigade")
    assert _events(session, major, "reclassified") == []  # untouched: it is where it was, for the reason it had


def test_reclassed_down_by_the_brigade_the_hazard_stays_with_the_brigade(client, session, units):
    place, hid = _report(client, session, units, "grid-a-1-1", "key_unit_1", category="ebike_indoor")
    assert _hazard(session, hid).holder_unit_id == units["brigade"].id
    r = _reclass(client, place.id, "rental", who="brigade")
    assert r.status_code == 200, r.text
    assert _class_of(session, place.id) == "rental"
    h = _hazard(session, hid)
    assert (h.tier, h.holder_unit_id, h.rule, h.place_class) == ("brigade", units["brigade"].id,
                                                                 "key-unit-brigade", "rental")
    # a new hazard there goes where the new class says
    worker = login(client, "worker-a1")
    [res] = push(client, worker, op("hazard.report", hazard_data(place.id, NOW, category="lpg_misuse", photos=[])))
    assert res["result"]["holder_org_unit_id"] == units["office-a"].id, res


def test_a_dismissed_hazard_follows_so_that_a_reopening_reaches_the_brigade(client, session, units):
    place, hid = _report(client, session, units, "grid-a-1-1", "rental", category="lpg_misuse")
    _ok(client, hid, "office-a", {"action": "dismiss", "reason": "误报"})
    assert _reclass(client, place.id, "key_unit_2").status_code == 200
    h = _hazard(session, hid)
    assert (h.status, h.tier, h.holder_unit_id, h.escalate_at) == ("dismissed", "brigade", units["brigade"].id, None)
    assert h.rule == "key-unit-brigade"
    [ev] = _events(session, hid, "reclassified")
    assert (ev.data["from_tier"], ev.data["to_tier"], ev.data["status"]) == ("town_office", "brigade", "dismissed")
    assert _hops(session, hid)[-1].via == "reclassified"
    _ok(client, hid, "office-a", {"action": "reopen", "reason": "复查发现仍存在"})
    h = _hazard(session, hid)
    assert (h.status, h.holder_unit_id) == ("referred", units["brigade"].id)
    assert hid in _queue_ids(client, "brigade")
    assert _chain_problems(session) == []


def test_a_reclass_the_new_tier_cannot_take_is_refused_and_changes_nothing(client, session, units):
    town = create_unit(session, code="town-d", name="无所镇", kind=UnitKind.town, parent=units["county"])
    office = create_unit(session, code="office-d", name="无所镇办", kind=UnitKind.town_office, parent=town)
    community = create_unit(session, code="community-d-1", name="无所社区", kind=UnitKind.community, parent=town)
    grid = create_unit(session, code="grid-d-1-1", name="无所网格", kind=UnitKind.grid, parent=community)
    session.add(Place(id="place-in-town-d", name="出租屋", grid_id=grid.id, town_id=town.id,
                      community_id=community.id, place_class="rental"))
    session.commit()
    [res] = push(client, login(client, "admin", device="admin-phone"),
                 op("hazard.report", hazard_data("place-in-town-d", NOW, category="ebike_indoor", photos=[])))
    hid = res["result"]["hazard_id"]
    assert res["result"]["holder_org_unit_id"] == office.id
    version = _hazard(session, hid).version
    r = _reclass(client, "place-in-town-d", "key_unit_3")
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert (err["code"], err.get("field")) == ("routing_failed", "place_class") and "police_station" in err["message"]
    assert _class_of(session, "place-in-town-d") == "rental"
    h = _hazard(session, hid)
    assert (h.holder_unit_id, h.place_class, h.version) == (office.id, "rental", version)
    # a class the brigade supervises is fine there: the county has its brigade
    assert _reclass(client, "place-in-town-d", "key_unit_1").status_code == 200
    assert _hazard(session, hid).holder_unit_id == units["brigade"].id


# -- reclassed and moved in one edit: one re-route ----------------------------------------------------


def test_reclassed_and_moved_to_another_town_is_one_reroute_naming_both(client, session, units):
    place, hid = _report(client, session, units, "grid-a-1-1", "rental", category="ebike_indoor")
    r = client.patch(f"/api/v1/places/{place.id}", json={"grid_id": units["grid-b-1-1"].id,
                                                          "place_class": "key_unit_2"},
                     headers=login(client, "admin", device="desk"))
    assert r.status_code == 200, r.text
    h = _hazard(session, hid)
    assert (h.tier, h.holder_unit_id, h.town_id, h.rule) == ("brigade", units["brigade"].id, units["town-b"].id,
                                                             "key-unit-brigade")
    hops = _hops(session, hid)
    assert len(hops) == 2 and hops[-1].to_unit_id == units["brigade"].id
    [ev] = [e for e in _events(session, hid, "relocated") + _events(session, hid, "reclassified")]
    assert (ev.data["from_class"], ev.data["to_class"], ev.data["to_town_id"]) == ("rental", "key_unit_2",
                                                                                   units["town-b"].id)
    assert _ccs(session, hid) == {units["office-b"].id: True}
    assert _chain_problems(session) == []


def test_reclassed_and_moved_within_the_beat_is_rerouted_by_the_class(client, session, units):
    # police-a keeps it across the move (same town, same station); the new class wants the brigade
    place, hid = _report(client, session, units, "grid-a-1-1", "key_unit_3", category="ebike_indoor")
    assert _hazard(session, hid).holder_unit_id == units["police-a"].id
    r = client.patch(f"/api/v1/places/{place.id}", json={"grid_id": units["grid-a-2-1"].id,
                                                          "place_class": "key_unit_1"},
                     headers=login(client, "admin", device="desk"))
    assert r.status_code == 200, r.text
    h = _hazard(session, hid)
    assert (h.tier, h.holder_unit_id, h.rule, h.grid_id) == ("brigade", units["brigade"].id, "key-unit-brigade",
                                                             units["grid-a-2-1"].id)
    assert len(_hops(session, hid)) == 2


# -- lowering: only the supervising body, one above it, or the admin --------------------------------


REFUSED = [  # (who, from, to): a lower tier would supervise it, and the caller is below the one that does
    ("worker-a1", "key_unit_1", "rental"),
    ("office-a", "key_unit_2", "nine_small"),
    ("office-a", "key_unit_3", "nine_small"),
    ("worker-a1", "police_list", "rental"),
    ("police-a", "key_unit_1", "key_unit_3"),
]


def test_a_downgrade_by_a_body_below_the_supervising_one_is_403_and_changes_nothing(client, session, units):
    for who, from_class, to_class in REFUSED:
        place, hid = _report(client, session, units, "grid-a-1-1", from_class, category="ebike_indoor")
        h = _hazard(session, hid)
        before = (from_class, h.holder_unit_id, h.version)
        r = _reclass(client, place.id, to_class, who=who)
        assert r.status_code == 403, (who, from_class, to_class, r.text)
        err = r.json()["error"]
        assert (err["code"], err.get("field")) == ("not_allowed", "place_class"), err
        assert _class_of(session, place.id) == from_class
        h = _hazard(session, hid)
        assert (h.place_class, h.holder_unit_id, h.version) == before


ALLOWED = [  # (who, from, to)
    ("police-a", "key_unit_3", "nine_small"),
    ("police-a", "police_list", "rental"),
    ("brigade", "key_unit_1", "key_unit_3"),
    ("brigade", "police_list", "residential"),
    ("admin", "key_unit_2", "other"),
]


def test_the_supervising_body_one_above_it_or_the_admin_may_lower_a_class(client, session, units):
    for who, from_class, to_class in ALLOWED:
        place = place_of(session, units, "grid-a-1-1", from_class)
        r = _reclass(client, place.id, to_class, who=who)
        assert r.status_code == 200, (who, from_class, to_class, r.text)
        assert _class_of(session, place.id) == to_class


def test_police_and_brigade_may_change_a_class_but_nothing_else(client, session, units):
    place = place_of(session, units, "grid-a-1-1", "key_unit_3")
    for who in ("police-a", "brigade"):
        r = _reclass(client, place.id, "key_unit_3", who=who, name="改了名")
        assert r.status_code == 403, r.text
        assert session.get(Place, place.id).name != "改了名"
    assert _reclass(client, place.id, "key_unit_1", who="police-a").status_code == 200  # raising: open to it
    assert _class_of(session, place.id) == "key_unit_1"
    assert _reclass(client, place.id, "key_unit_3", who="police-a").status_code == 403  # now the brigade's
    assert _reclass(client, place.id, "key_unit_3", who="brigade").status_code == 200
    other_town = place_of(session, units, "grid-b-1-1", "key_unit_3")
    assert _reclass(client, other_town.id, "rental", who="police-a").status_code == 404


def test_a_pushed_downgrade_keeps_the_class_and_applies_the_rest_of_the_edit(client, session, units):
    """A phone sends the class with every edit: one that has not heard the brigade made the premises a key
    unit sends the class it had. The owner's new number it brings is kept; the class stays, and the answer
    says so (the feed does not echo a phone's own premises edit)."""
    key_unit = place_of(session, units, "grid-a-1-1", "key_unit_1")
    rental = place_of(session, units, "grid-a-1-1", "rental")
    worker = login(client, "worker-a1")
    upsert = {"id": key_unit.id, "name": key_unit.name, "address": key_unit.address, "grid_id": key_unit.grid_id,
              "place_class": "rental", "owner_phone": "13800000001"}
    raise_ = {"id": rental.id, "name": rental.name, "address": rental.address, "grid_id": rental.grid_id,
              "place_class": "key_unit_1"}
    res = push(client, worker, op("place.upsert", upsert),
               op("hazard.report", hazard_data(key_unit.id, NOW, category="ebike_indoor", photos=[])),
               op("place.upsert", raise_))
    assert [r["status"] for r in res] == ["applied", "applied", "applied"], res
    assert res[0]["result"]["kept"] == {"place_class": "key_unit_1"}
    assert "kept" not in res[2]["result"]
    assert res[1]["result"]["holder_org_unit_id"] == units["brigade"].id  # still a key unit
    assert _class_of(session, key_unit.id) == "key_unit_1"
    assert session.get(Place, key_unit.id, populate_existing=True).owner_phone == "13800000001"
    assert _class_of(session, rental.id) == "key_unit_1"


def test_a_pushed_raise_reroutes_the_open_hazards(client, session, units):
    place, hid = _report(client, session, units, "grid-a-1-1", "rental", category="ebike_indoor")
    worker = login(client, "worker-a1")
    [res] = push(client, worker, op("place.upsert", {"id": place.id, "name": place.name, "address": place.address,
                                                     "grid_id": place.grid_id, "place_class": "key_unit_3"}))
    assert res["status"] == "applied", res
    h = _hazard(session, hid)
    assert (h.holder_unit_id, h.rule) == (units["police-a"].id, "police-supervised")
    [ev] = _events(session, hid, "reclassified")
    assert ev.device_id is not None


def test_the_csv_import_may_lower_and_raise_as_the_admin_may(client, session, units, tmp_path):
    from app.places.service import import_places_csv

    key_unit, at_brigade = _report(client, session, units, "grid-a-1-1", "key_unit_1", category="ebike_indoor")
    rental, at_office = _report(client, session, units, "grid-a-1-1", "rental", category="ebike_indoor")
    csv = tmp_path / "classes.csv"
    csv.write_text("id,name,grid,place_class\n"
                   f"{key_unit.id},{key_unit.name},grid-a-1-1,rental\n"
                   f"{rental.id},{rental.name},grid-a-1-1,key_unit_2\n", encoding="utf-8")
    rep = import_places_csv(session, csv, rules=_rules(session))
    session.commit()
    assert (rep.updated, rep.errors) == (2, [])
    assert _hazard(session, at_brigade).holder_unit_id == units["brigade"].id  # never down
    assert _hazard(session, at_office).holder_unit_id == units["brigade"].id
    assert len(_events(session, at_office, "reclassified")) == 1
    assert _chain_problems(session) == []
