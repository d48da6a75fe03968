"""An op whose op_id cannot key the op log (missing, not text, empty, too long, with a NUL) is rejected alone,
as `bad_op_id` with op_id null in its result (app/sync/schemas.py OpResult), and the rest of the batch applies.
It made the whole push a 422: the phone re-sent the batch, and was refused, for ever, the good ops with it."""

import json
from datetime import datetime, timezone

import pytest
from sqlmodel import func, select

from app.sync.models import SyncOp
from tests.conftest import login
from tests.helpers import hazard_data, op, place_of, uid

PUSH = "/api/v1/sync/push"
FOUND = datetime(2026, 3, 2, 1, 0, tzinfo=timezone.utc)
REPORT = {"type": "hazard.report"}

BAD_OP_IDS = [
    pytest.param({"op_id": 5}, id="number"),
    pytest.param({"op_id": None}, id="null"),
    pytest.param({}, id="missing"),
    pytest.param({"op_id": ["a1b2c3d4"]}, id="list"),
    pytest.param({"op_id": True}, id="bool"),
    pytest.param({"op_id": ""}, id="empty"),
    pytest.param({"op_id": "x" * 65}, id="too-long"),
    pytest.param({"op_id": "a\x00b"}, id="nul"),
]


def ops_logged(session) -> int:
    return session.exec(select(func.count()).select_from(SyncOp)).one()


def send(client, headers, ops: list) -> list[dict]:
    r = client.post(PUSH, content=json.dumps({"ops": ops}).encode(),
                    headers={**headers, "Content-Type": "application/json"})
    assert r.status_code == 200, r.text[:500]
    results = r.json()["results"]
    assert len(results) == len(ops)
    return results


def assert_bad_op_id(result: dict) -> None:
    assert result["op_id"] is None and result["status"] == "rejected", result
    assert result["error"]["code"] == "bad_op_id" and result["error"]["field"] == "op_id", result
    assert result["error"]["message"].startswith("op_id: "), result


@pytest.mark.parametrize("envelope", BAD_OP_IDS)
def test_an_op_with_a_bad_op_id_is_rejected_alone_and_the_good_op_applies_once(client, session, units, envelope):
    place = place_of(session, units, "grid-a-1-1", "rental")
    worker = login(client, "worker-a1")
    bad = {**envelope, **REPORT, "data": hazard_data(place.id, FOUND)}
    good = op("hazard.report", hazard_data(place.id, FOUND, category="blocked_exit"))
    before = ops_logged(session)
    first, second = send(client, worker, [bad, good])
    assert_bad_op_id(first)
    assert second["op_id"] == good["op_id"] and second["status"] == "applied", second
    assert ops_logged(session) == before + 1  # nothing logged under the bad one
    again = send(client, worker, [bad, good])  # the phone re-sends the batch as it was
    assert_bad_op_id(again[0])
    assert again[1]["status"] == "duplicate" and again[1]["result"] == second["result"], again[1]
    assert ops_logged(session) == before + 1


def test_bad_op_ids_keep_their_places_in_a_batch_planned_ahead(client, session, units):
    """Four reports and more are planned on a read transaction before the write (service.plans_ahead):
    the refused ops are left out of the plan, and each result still answers the op in its place."""
    place = place_of(session, units, "grid-a-1-1", "rental")
    worker = login(client, "worker-a1")
    goods = [op("hazard.report", hazard_data(place.id, FOUND, category=c))
             for c in ("ebike_indoor", "blocked_exit", "window_bars", "lpg_misuse")]
    batch = [{"op_id": 1, **REPORT, "data": {}}, goods[0], goods[1], {**REPORT, "data": {}}, goods[2], goods[3],
             {"op_id": "", **REPORT, "data": {}}]
    results = send(client, worker, batch)
    for k in (0, 3, 6):
        assert_bad_op_id(results[k])
    assert [(r["op_id"], r["status"]) for k, r in enumerate(results) if k not in (0, 3, 6)] == [
        (g["op_id"], "applied") for g in goods]
    again = send(client, worker, batch)
    assert [r["status"] for r in again] == ["rejected", "duplicate", "duplicate", "rejected", "duplicate",
                                            "duplicate", "rejected"]


def test_a_bad_op_id_beside_an_op_applied_one_by_one(client, session, units):
    """A premises upsert is not a creation planned in bulk: it is applied op by op."""
    worker = login(client, "worker-a1")
    data = {"id": uid(), "name": "新开小吃店", "grid_id": units["grid-a-1-1"].id, "place_class": "nine_small"}
    good = op("place.upsert", data)
    first, second = send(client, worker, [{"op_id": {"id": 1}, "type": "place.upsert", "data": data}, good])
    assert_bad_op_id(first)
    assert second["status"] == "applied", second
    assert send(client, worker, [good])[0]["status"] == "duplicate"


def test_a_batch_of_bad_op_ids_only_is_answered_not_refused(client):
    results = send(client, login(client, "worker-a1"), [{**REPORT, "data": {}}, {"op_id": 7, **REPORT}])
    for r in results:
        assert_bad_op_id(r)


def test_an_op_id_of_64_characters_is_still_taken(client, session, units):
    place = place_of(session, units, "grid-a-1-1", "rental")
    good = op("hazard.report", hazard_data(place.id, FOUND), op_id="x" * 64)
    [res] = send(client, login(client, "worker-a1"), [good])
    assert (res["op_id"], res["status"]) == ("x" * 64, "applied"), res


def test_the_schema_still_documents_op_id_as_required_text(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["Op"]["properties"]["op_id"] == {"type": "string", "minLength": 1, "maxLength": 64,
                                                    "title": "Op Id"}
    assert set(schemas["Op"]["required"]) == {"op_id", "type"}


def test_an_op_that_is_not_an_object_is_rejected_alone(client, session, units):
    """(Failed before its fix, a review.) `{"ops": [5, {...good op...}]}`: PushRequest.ops is list[Op], so an element that is not a JSON object
    fails the model and the whole push is a 422 (`ops.0: Input should be an object`). The good op is never
    applied, and the phone re-sends the batch, and is refused, for ever: exactly what rejecting a bad op_id
    alone was meant to end (an op that is not an object has no usable op_id either). Fix: let Op accept any
    JSON value (a model_validator(mode="before") turning a non-dict into an Op with op_id None) so it is
    answered as bad_op_id in its place."""
    place = place_of(session, units, "grid-a-1-1", "rental")
    good = op("hazard.report", hazard_data(place.id, FOUND))
    r = client.post(PUSH, json={"ops": [5, good]}, headers=login(client, "worker-a1"))
    assert r.status_code == 200, r.text[:300]
    first, second = r.json()["results"]
    assert first["op_id"] is None and first["status"] == "rejected", first
    assert second["op_id"] == good["op_id"] and second["status"] == "applied", second


def test_an_op_id_cut_in_a_surrogate_is_not_taken_for_another(client, session, units):
    """A lone surrogate in an op_id is read as U+FFFD (the body's parser keeps the rest of the push): that is not
    the id the phone sent, and two such ids would become one, so the op is rejected alone as bad_op_id."""
    place = place_of(session, units, "grid-a-1-1", "rental")
    good = op("hazard.report", hazard_data(place.id, FOUND))
    cut = json.dumps(op("hazard.report", hazard_data(place.id, FOUND), op_id="a1b2c3d4-PLACEHOLDER"))
    body = '{"ops": [' + cut.replace("PLACEHOLDER", "\\ud800") + ", " + json.dumps(good) + "]}"
    r = client.post(PUSH, content=body.encode(), headers={**login(client, "worker-a1"),
                                                          "Content-Type": "application/json"})
    assert r.status_code == 200, r.text[:300]
    first, second = r.json()["results"]
    assert (first["op_id"], first["status"], first["error"]["code"]) == (None, "rejected", "bad_op_id"), first
    assert second["status"] == "applied"
