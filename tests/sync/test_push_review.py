"""Push, from an adversarial review: op ids are their user's, malformed ops and text the database cannot
hold are rejected one op at a time, and the bulk path and the op-by-op path leave the same answers and
the same rows for the same batch."""

import json
from datetime import datetime, timezone

import pytest
from sqlmodel import select

from app.hazards.models import Hazard
from app.inspections.models import Inspection
from app.places.models import Place
from app.sync import service
from app.sync.models import SyncOp
from tests.conftest import login
from tests.helpers import hazard_data, op, place_of, push, uid
from tests.sync.test_push import NOW, place, worker  # noqa: F401  (place, worker: fixtures)

PUSH = "/api/v1/sync/push"
# bulk; mixed: with an unknown op after them (rejected, changes nothing; the known ops still go in bulk);
# op by op: the bulk writer declines every run, as when the database refuses the bulk insert
OP_BY_OP = ("bulk", "mixed", "op by op")


def _batch(path: str, *ops) -> list[dict]:
    """The ops as sent on that path (op by op: see _op_by_op)."""
    return [*ops, op("hazard.explode", {})] if path == "mixed" else list(ops)


@pytest.fixture(autouse=True)
def _op_by_op(request, monkeypatch):
    """A test run with path "op by op" has every run applied one op at a time. An unknown op in the batch
    no longer does that (the bulk planner takes the known ops and rejects the other alone), so the
    "op by op" of these tests had been bulk too."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("path") == "op by op":
        monkeypatch.setattr(service, "_write_run", lambda ctx, plan: None)


def _statuses(results: list[dict]) -> list[tuple]:
    return [(r["status"], (r["error"] or {}).get("code"), (r["error"] or {}).get("field")) for r in results]


@pytest.mark.parametrize("path", OP_BY_OP)
def test_an_op_id_another_user_applied_is_neither_their_answer_nor_a_silent_loss(clocked_client, worker, session,
                                                                                units, path):
    """A re-used op_id (a buggy or hostile client) got `duplicate` with the other user's result: town B's
    worker read town A's hazard id, holder and rule, and their own report was dropped as if stored."""
    mine = op("hazard.report", hazard_data(place_of(session, units, "grid-a-1-1", "rental").id, NOW))
    [first] = push(clocked_client, worker, mine)
    assert first["status"] == "applied"
    theirs_place = place_of(session, units, "grid-b-1-1", "rental")
    theirs = op("hazard.report", hazard_data(theirs_place.id, NOW), op_id=mine["op_id"])
    other = login(clocked_client, "worker-b1", device="phone-b")
    r = clocked_client.post(PUSH, json={"ops": _batch(path, theirs)}, headers=other)
    assert r.status_code == 200, r.text
    answer = r.json()["results"][0]
    assert answer["status"] == "rejected" and answer["result"] is None, answer
    assert answer["error"]["code"] == "op_id_taken" and answer["error"]["field"] == "op_id"
    assert first["result"]["hazard_id"] not in r.text and first["result"]["holder_org_unit_id"] not in r.text
    assert session.get(Hazard, theirs["data"]["id"]) is None  # not stored, and not claimed to be
    # the owner still gets their first answer
    [again] = push(clocked_client, worker, *_batch(path, mine))[:1]
    assert again == {**first, "status": "duplicate"}


def test_the_same_user_on_another_phone_gets_the_first_answer(clocked_client, worker, place):
    o = op("hazard.report", hazard_data(place.id, NOW))
    [first] = push(clocked_client, worker, o)
    [again] = push(clocked_client, login(clocked_client, "worker-a1", device="new-phone"), o)
    assert again == {**first, "status": "duplicate"}


@pytest.mark.parametrize("path", OP_BY_OP)
def test_text_with_a_nul_character_is_rejected_for_that_op_alone(clocked_client, worker, place, session, path):
    """PostgreSQL text cannot hold U+0000: a description with one was a 500 that lost the whole batch."""
    good = hazard_data(place.id, NOW)
    bad_report = hazard_data(place.id, NOW, description="楼道\x00充电")
    bad_inspection = {"id": uid(), "place_id": place.id, "started_at": NOW.isoformat(),
                      "checklist": [{"item": "ebike_indoor", "result": "fail", "note": "a\x00b"}]}
    results = push(clocked_client, worker, *_batch(path, op("hazard.report", bad_report),
                                                   op("inspection.submit", bad_inspection), op("hazard.report", good)))
    assert _statuses(results)[:3] == [("rejected", "validation_error", "data.description"),
                                      ("rejected", "validation_error", "data.checklist.0.note"),
                                      ("applied", None, None)]
    assert session.get(Hazard, good["id"]) is not None and session.get(Hazard, bad_report["id"]) is None
    reinspect = {"id": uid(), "hazard_id": good["id"], "rectified": True, "note": "\x00", "at": NOW.isoformat()}
    [r] = push(clocked_client, worker, op("hazard.reinspect", reinspect))
    assert _statuses([r]) == [("rejected", "validation_error", "data.note")]


def test_a_push_whose_app_version_holds_a_nul_is_422_not_500(clocked_client, worker):
    r = clocked_client.post(PUSH, json={"ops": [], "app_version": "1.0\x00"}, headers=worker)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["fields"][0]["field"] == "app_version"


@pytest.mark.parametrize("path", OP_BY_OP)
@pytest.mark.parametrize("field", ["found_at", "started_at"])
def test_a_device_time_with_no_instant_in_utc_is_rejected_for_that_op_alone(clocked_client, worker, place, session,
                                                                            path, field):
    """0001-01-01T00:30+01:00 parses, is not in the future, and has no UTC instant: it failed at the INSERT
    (OverflowError, a 500 that lost the batch). A clock reset to 1970 is still kept, as data."""
    if field == "found_at":
        bad = op("hazard.report", {**hazard_data(place.id, NOW), "found_at": "0001-01-01T00:30:00+01:00"})
    else:
        bad = op("inspection.submit", {"id": uid(), "place_id": place.id, "started_at": "0001-01-01T00:30:00+01:00"})
    reset_clock = hazard_data(place.id, NOW)
    reset_clock["found_at"] = "1970-01-01T08:00:00+08:00"
    results = push(clocked_client, worker, *_batch(path, bad, op("hazard.report", reset_clock)))
    assert _statuses(results)[:2] == [("rejected", "validation_error", f"data.{field}"), ("applied", None, None)]
    assert session.get(Hazard, reset_clock["id"]).found_at == datetime(1970, 1, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize("data", [[], "hazard", None, 7, [{"id": "x"}]])
def test_an_op_whose_data_is_not_an_object_is_rejected_alone(clocked_client, worker, place, session, data):
    """It was a 422 for the whole batch: the phone re-sends the batch, is refused again, and the good ops
    behind the bad one never arrive."""
    good = hazard_data(place.id, NOW)
    bad = {"op_id": uid(), "type": "hazard.report", "data": data}
    results = push(clocked_client, worker, bad, op("hazard.report", good))
    assert _statuses(results) == [("rejected", "validation_error", "data"), ("applied", None, None)]
    assert results[0]["error"]["message"].startswith("data: ")
    assert session.get(Hazard, good["id"]) is not None


def test_an_op_type_of_any_length_is_an_unknown_op_type(clocked_client, worker, place, session):
    good = hazard_data(place.id, NOW)
    results = push(clocked_client, worker, op("hazard.report.v2+" + "with-a-name-longer-than-forty-characters", {}), op("hazard.report", good))
    assert _statuses(results) == [("rejected", "unknown_op_type", "type"), ("applied", None, None)]


@pytest.mark.parametrize("path", OP_BY_OP)
def test_an_op_id_sent_twice_in_a_batch_gets_its_first_answer_whatever_its_data(clocked_client, worker, place,
                                                                                 session, path):
    """Op by op, the second copy was `duplicate`; in bulk, `rejected` for its data, and `duplicate` again
    when the batch was re-sent: the same op answered two ways."""
    o = op("hazard.report", hazard_data(place.id, NOW))
    garbled = {**o, "data": {**o["data"], "category": 5}}
    results = push(clocked_client, worker, *_batch(path, o, garbled))
    assert results[0]["status"] == "applied"
    assert results[1] == {**results[0], "status": "duplicate"}
    again = push(clocked_client, worker, *_batch(path, o, garbled))
    assert again[:2] == [results[1], results[1]]


def _in_one_batch(clocked_client, worker, session, units, op_by_op: bool, monkeypatch, tag: str) -> list[tuple]:
    """An inspection with two hazards of a kind, then two more reports of it: who repeats whom, as indexes."""
    grid = units["grid-a-1-1"]
    place = Place(id=uid(), name=f"复查{tag}", address="测试路2号", grid_id=grid.id, town_id=grid.town_id,
                  community_id=grid.community_id, place_class="rental")
    session.add(place)
    session.commit()
    # ids falling in the order they are reported: the database's tie-break (created_at, then id) picks the
    # last reported of the batch, not the first
    ids = [f"{9 - k}{tag}000000-0000-0000-0000-000000000000" for k in range(4)]
    hz = [hazard_data(place.id, NOW, category="blocked_exit", id=i) for i in ids]
    inspection = {"id": uid(), "place_id": place.id, "started_at": NOW.isoformat(), "hazards": hz[:2]}
    ops = [op("inspection.submit", inspection), op("hazard.report", hz[2]), op("hazard.report", hz[3])]
    with monkeypatch.context() as m:
        if op_by_op:  # as when the database refuses the bulk insert, or a premises moved meanwhile
            m.setattr(service, "_write_run", lambda ctx, plan: None)
        results = push(clocked_client, worker, *ops)
    assert [r["status"] for r in results] == ["applied"] * 3, results
    rows = {h.id: h.duplicate_of_id for h in session.exec(select(Hazard).where(Hazard.place_id == place.id))}
    return [(k, ids.index(rows[i]) if rows[i] else None) for k, i in enumerate(ids)]


def test_bulk_and_op_by_op_agree_on_which_report_a_report_repeats(clocked_client, worker, session, units, monkeypatch):
    """In bulk, the second hazard of an inspection repeated nothing, and later reports the first; op by op,
    the second repeated the first, and later reports whichever of the batch's hazards had the lowest id (a
    duplicate itself). The first one reported is the one the others repeat, on both paths."""
    bulk = _in_one_batch(clocked_client, worker, session, units, False, monkeypatch, "a")
    one_by_one = _in_one_batch(clocked_client, worker, session, units, True, monkeypatch, "b")
    assert bulk == one_by_one == [(0, None), (1, 0), (2, 0), (3, 0)]


@pytest.mark.parametrize("path", OP_BY_OP)
def test_a_hazard_id_taken_in_its_own_inspection_is_named(clocked_client, worker, place, session, path):
    twin = hazard_data(place.id, NOW)
    inspection = {"id": uid(), "place_id": place.id, "started_at": NOW.isoformat(),
                  "hazards": [twin, {**twin, "category": "lpg_misuse"}]}
    [r] = push(clocked_client, worker, *_batch(path, op("inspection.submit", inspection)))[:1]
    assert _statuses([r]) == [("rejected", "hazard_exists", "data.hazards.1.id")], r
    assert session.get(Inspection, inspection["id"]) is None and session.get(Hazard, twin["id"]) is None


def test_a_re_upsert_keeps_what_it_does_not_send(clocked_client, worker, units, session):
    """place.upsert blanked every field the op left out: an app that sends no owner_phone (an older one) wiped
    the number, the coordinates and the address already on record."""
    pid = uid()
    grid = units["grid-a-1-1"].id
    [r] = push(clocked_client, worker, op("place.upsert", {
        "id": pid, "name": "新开麻辣烫", "address": "中心路12号", "grid_id": grid, "place_class": "nine_small",
        "lat": 29.35, "lon": 105.92, "owner_name": "王", "owner_phone": "13800000000"}))
    assert r["status"] == "applied"
    [r] = push(clocked_client, worker, op("place.upsert", {"id": pid, "name": "麻辣烫", "grid_id": grid,
                                                           "place_class": "nine_small", "lat": None}))
    assert r["status"] == "applied"
    p = session.exec(select(Place).where(Place.id == pid).execution_options(populate_existing=True)).one()
    assert (p.name, p.address, p.lat, p.lon, p.owner_name, p.owner_phone) == (
        "麻辣烫", "中心路12号", None, 105.92, "王", "13800000000")


def test_a_malformed_op_fixed_and_re_sent_under_its_op_id_applies(clocked_client, worker, place, session):
    """Rejected one op at a time, a malformed op claims no op_id: the phone's fixed copy is applied."""
    o = {"op_id": uid(), "type": "hazard.report", "data": json.loads("[]")}
    push(clocked_client, worker, o)
    assert session.get(SyncOp, o["op_id"]) is None
    fixed = {**o, "data": hazard_data(place.id, NOW)}
    [r] = push(clocked_client, worker, fixed)
    assert r["status"] == "applied"
