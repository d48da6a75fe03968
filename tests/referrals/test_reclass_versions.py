"""Who may lower a class is a unit, not a tier; and a phone's edit says which copy it was made on.

- A town has several police stations, each supervising the key_unit_3 premises of its own beat
  (a community's ``police_station_id``). Another station of the same town may not lower one of them.
- A phone sends the class with every ``place.upsert``. With ``base_version`` (the premises' ``version``
  that pull sent), a class sent from a copy older than the last change of class is not the worker's
  choice but the copy's: the class is kept, the rest of the edit applied, and the answer says why."""

from app.auth.models import Role
from app.auth.service import create_user
from app.org.models import UnitKind
from app.places.models import Place
from app.sync.feed import place_data
from tests.conftest import DEMO_PASSWORD, login
from tests.helpers import hazard_data, op, place_of, push
from tests.referrals.test_reclass import _class_of, _reclass
from tests.referrals.test_relocation import NOW, beat_station


def _station_user(session, station):
    create_user(session, username=station.code, password=DEMO_PASSWORD, role=Role.police_station, unit=station)
    session.commit()


def test_a_police_station_may_not_lower_a_key_unit_of_another_stations_beat(client, session, units):
    station_2 = beat_station(session, units)  # community-b-2 is police-b-2's beat; community-b-1 police-b's
    _station_user(session, station_2)
    grid_b_2 = next(u for u in units.values() if u.kind == UnitKind.grid and u.parent_id == units["community-b-2"].id)
    in_beat_2 = place_of(session, units, grid_b_2.code, "key_unit_3")
    in_beat_1 = place_of(session, units, "grid-b-1-1", "key_unit_3")

    r = _reclass(client, in_beat_2.id, "rental", who="police-b")
    assert r.status_code == 403, r.text
    assert (r.json()["error"]["code"], r.json()["error"]["field"]) == ("not_allowed", "place_class")
    assert _class_of(session, in_beat_2.id) == "key_unit_3"
    r = _reclass(client, in_beat_1.id, "rental", who="police-b-2")
    assert r.status_code == 403, r.text
    assert _class_of(session, in_beat_1.id) == "key_unit_3"

    # each its own; raising stays open to either; the brigade above both may lower either
    assert _reclass(client, in_beat_2.id, "rental", who="police-b-2").status_code == 200
    assert _reclass(client, in_beat_1.id, "rental", who="police-b").status_code == 200
    assert _reclass(client, in_beat_1.id, "key_unit_3", who="police-b-2").status_code == 200
    assert _reclass(client, in_beat_1.id, "nine_small", who="brigade").status_code == 200
    assert _class_of(session, in_beat_1.id) == "nine_small"


def _upsert(place: Place, place_class: str, **more) -> dict:
    return {"id": place.id, "name": place.name, "address": place.address, "grid_id": place.grid_id,
            "place_class": place_class, **more}


def _fresh(session, place_id: str) -> Place:
    return session.get(Place, place_id, populate_existing=True)


def test_every_change_bumps_the_version_and_marks_the_fields_it_changed(client, session, units):
    place = place_of(session, units, "grid-a-1-1", "rental")
    assert (place.version, place.field_versions) == (1, {})
    desk = login(client, "office-a", device="desk")
    assert client.patch(f"/api/v1/places/{place.id}", json={"owner_phone": "13900000000"},
                        headers=desk).json()["version"] == 2
    p = _fresh(session, place.id)
    assert (p.version, p.field_versions["owner_phone"][0], "place_class" in p.field_versions) == (2, 2, False)
    assert place_data(p)["version"] == 2  # what pull sends, so the phone can name it
    assert _reclass(client, place.id, "key_unit_3", who="office-a").json()["version"] == 3
    p = _fresh(session, place.id)
    assert (p.version, p.field_versions["place_class"][0], p.field_versions["owner_phone"][0]) == (3, 3, 2)


def test_a_stale_copys_class_is_kept_whichever_way_it_points(client, session, units):
    """The brigade lowered a key unit (version 2) and the police raised a rental (version 2); phones that
    edited copies of version 1 send the old classes back with a new owner's number. Without base_version the
    first would be a lowering the worker may not make (kept) and the second a raise (applied, sending the
    hazards back up): with it both are seen for what they are."""
    lowered = place_of(session, units, "grid-a-1-1", "key_unit_1")
    raised = place_of(session, units, "grid-a-1-1", "rental")
    assert _reclass(client, lowered.id, "rental", who="brigade").status_code == 200
    assert _reclass(client, raised.id, "key_unit_3", who="police-a").status_code == 200
    worker = login(client, "worker-a1")
    res = push(client, worker,
               op("place.upsert", _upsert(lowered, "key_unit_1", owner_phone="13800000001", base_version=1)),
               op("place.upsert", _upsert(raised, "rental", owner_phone="13800000002", base_version=1)),
               op("hazard.report", hazard_data(lowered.id, NOW, category="ebike_indoor", photos=[])))
    assert [r["status"] for r in res] == ["applied"] * 3, res
    assert (res[0]["result"]["kept"], res[0]["result"]["kept_why"]) == ({"place_class": "rental"},
                                                                      {"place_class": "stale_copy"})
    assert (res[1]["result"]["kept"], res[1]["result"]["kept_why"]) == ({"place_class": "key_unit_3"},
                                                                      {"place_class": "stale_copy"})
    assert res[2]["result"]["holder_org_unit_id"] == units["office-a"].id  # routed as the rental it now is
    assert (_class_of(session, lowered.id), _class_of(session, raised.id)) == ("rental", "key_unit_3")
    assert (_fresh(session, lowered.id).owner_phone, _fresh(session, raised.id).owner_phone) == (
        "13800000001", "13800000002")
    assert res[0]["result"]["version"] == _fresh(session, lowered.id).version == 3


def test_a_class_chosen_on_a_current_copy_is_applied(client, session, units):
    place = place_of(session, units, "grid-a-1-1", "rental")
    desk = login(client, "office-a", device="desk")
    assert client.patch(f"/api/v1/places/{place.id}", json={"owner_name": "王老板"}, headers=desk).status_code == 200
    worker = login(client, "worker-a1")
    # an edit of anything else since the copy does not make its class stale: only a change of class does
    [res] = push(client, worker, op("place.upsert", _upsert(place, "key_unit_3", base_version=1)))
    assert res["status"] == "applied" and "kept" not in res["result"], res
    assert _class_of(session, place.id) == "key_unit_3"
    p = _fresh(session, place.id)
    assert p.field_versions["place_class"][0] == p.version == 3
    # and on a copy that has the class as it is now, the same worker's lowering is still not theirs to make
    [res] = push(client, worker, op("place.upsert", _upsert(place, "rental", base_version=3)))
    assert res["result"]["kept_why"] == {"place_class": "not_allowed"}, res
    assert _class_of(session, place.id) == "key_unit_3"


def test_base_version_must_be_a_positive_integer(client, session, units):
    place = place_of(session, units, "grid-a-1-1", "rental")
    worker = login(client, "worker-a1")
    for bad in (0, -1, "x", 2**31):
        [res] = push(client, worker, op("place.upsert", _upsert(place, "rental", base_version=bad)))
        assert res["status"] == "rejected", (bad, res)
        assert "base_version" in res["error"]["message"], res
    assert _fresh(session, place.id).version == 1


def test_a_replayed_stale_upsert_answers_the_same(client, session, units):
    place = place_of(session, units, "grid-a-1-1", "key_unit_1")
    assert _reclass(client, place.id, "rental", who="brigade").status_code == 200
    worker = login(client, "worker-a1")
    o = op("place.upsert", _upsert(place, "key_unit_1", base_version=1))
    first = push(client, worker, o)
    again = push(client, worker, o)
    assert again[0]["status"] == "duplicate" and again[0]["result"] == first[0]["result"]
    # all it changed was kept: no new version (a record sent back as it is writes nothing)
    assert _fresh(session, place.id).version == first[0]["result"]["version"] == 2
