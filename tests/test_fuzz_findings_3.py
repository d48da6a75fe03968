"""What an API-wide fuzzing review found beyond tests/test_fuzz_findings*.py and tests/sync/test_push_fuzz.py:
every route of the OpenAPI schema was sent wrong JSON types, nulls, 100k strings, NULs, lone surrogates, emoji,
out-of-range and float-as-int numbers, NaN/Infinity, impossible and extreme dates, naive times, garbled ids and
cursors, repeated parameters, empty and non-JSON bodies, wrong content types, deep nesting and 100k arrays, on
SQLite and PostgreSQL, by every role. No 500 came back. These are what remains: input taken that should have been
refused, and a refusal that names the wrong thing. Each test failed on the code as it was reviewed."""

import json
from datetime import datetime, timezone

from tests.conftest import login
from tests.helpers import hazard_data, op, place_of, report, uid

FOUND = datetime(2026, 3, 2, tzinfo=timezone.utc)


def _named(r, field: str) -> bool:
    error = r.json()["error"]
    names = [f.get("field") or "" for f in error.get("fields", [])] + [error.get("field") or ""]
    return any(n == field or n.endswith("." + field) or n.startswith(field + ".") for n in names)


def _accepted_hazard(client, session, units) -> tuple[str, dict]:
    place = place_of(session, units, "grid-a-1-1", "rental")
    hid = report(client, login(client, "worker-a1"), place.id, FOUND)["hazard_id"]
    office = login(client, "office-a", device="desk")
    r = client.post(f"/api/v1/hazards/{hid}/actions", json={"action": "accept"}, headers=office)
    assert r.status_code == 200 and r.json()["status"] == "accepted", r.text
    return hid, office


def test_a_number_is_not_a_rectification_deadline(client, session, units):
    """API.md: times are ISO-8601 with their offset. POST /hazards/{id}/actions {"action": "order_rectification",
    "deadline": 1900000000} was a 200: pydantic's lax AwareDatetime took the number as Unix seconds and the hazard
    went to `rectifying` with the deadline 2030-03-17T17:46:40Z (the same for the text "1900000000"). The fix of
    tests/test_fuzz_findings_2.py (reject_number_as_time) covers the push's times and /figures, not this one
    (app/hazards/schemas.py ActionRequest.deadline)."""
    for deadline in (1900000000, "1900000000"):
        hid, office = _accepted_hazard(client, session, units)
        r = client.post(f"/api/v1/hazards/{hid}/actions", json={"action": "order_rectification", "deadline": deadline},
                        headers=office)
        assert r.status_code == 422 and _named(r, "deadline"), (deadline, r.status_code, r.text[:300])
        after = client.get(f"/api/v1/hazards/{hid}", headers=office).json()
        assert after["status"] == "accepted" and not (after["deadline"] or "").startswith("2030"), after


def test_a_number_is_not_a_calendar_day(client):
    """PUT /calendar/overrides [{"day": 0, "is_workday": true}] was a 200 that stored an override for 1970-01-01:
    pydantic's lax `date` takes a number as Unix seconds (app/referrals/router.py OverrideIn.day). An admin's
    script that sends an unset day (0) files a calendar entry nobody asked for, and it counts as an override
    year ever after (GET /calendar/status override_years gained 1970)."""
    admin = login(client, "admin", device="desk")
    r = client.put("/api/v1/calendar/overrides", json=[{"day": 0, "is_workday": True}], headers=admin)
    assert r.status_code == 422 and _named(r, "day"), (r.status_code, r.text[:300])
    days = [o["day"] for o in client.get("/api/v1/calendar/overrides", headers=admin).json()]
    assert "1970-01-01" not in days, days


def test_a_boolean_is_not_a_coordinate(client, session, units):
    """POST /places {"lat": true, "lon": false} was a 201 storing the premises at (1.0, 0.0), in the Gulf of
    Guinea; a push's place.upsert with the same data was `applied` too. pydantic's lax float takes a bool
    (app/places/models.py PlaceBase.lat/lon, app/sync/schemas.py PlaceUpsertData.lat/lon,
    InspectionSubmitData.lat/lon)."""
    grid = units["grid-a-1-1"].id
    office = login(client, "office-a", device="desk")
    r = client.post("/api/v1/places", json={"name": "布尔网吧", "grid_id": grid, "place_class": "nine_small",
                                            "lat": True, "lon": False}, headers=office)
    assert r.status_code == 422 and (_named(r, "lat") or _named(r, "lon")), (r.status_code, r.text[:300])

    worker = login(client, "worker-a1")
    data = {"id": uid(), "name": "布尔小吃店", "grid_id": grid, "place_class": "nine_small", "lat": True, "lon": False}
    r = client.post("/api/v1/sync/push", json={"ops": [op("place.upsert", data)]}, headers=worker)
    assert r.status_code == 200, r.text
    [res] = r.json()["results"]
    assert res["status"] == "rejected" and res["error"]["field"] in ("data.lat", "data.lon"), res


def test_an_envelope_mistake_beside_a_lone_surrogate_is_named_not_called_invalid_json(client, session, units):
    """A push whose app_version is one character too long (or whose sent_at lacks its offset, or one of whose
    op_ids is 65 characters) and one of whose descriptions holds a lone surrogate (a phone cut an emoji in half)
    was a 422 saying `body: not valid JSON (unexpected end of hex escape at line 1 column 345)`: the body is JSON
    (the push reads lone surrogates on purpose) and the field at fault, app_version, is not named, so the phone's
    log points at the wrong thing. app/sync/router.py parse_push: the second parse's pydantic ValidationError is
    a ValueError, caught by `except (ValueError, RecursionError)`, and the first parser's json_invalid is raised
    instead. Without the surrogate the same body is a 422 naming app_version."""
    place = place_of(session, units, "grid-a-1-1", "rental")
    good = op("hazard.report", hazard_data(place.id, FOUND, description="SURR"))
    worker = login(client, "worker-a1")
    for envelope, field in (({"app_version": "x" * 41}, "app_version"),
                            ({"sent_at": "2026-03-02T09:00:00"}, "sent_at")):
        raw = json.dumps({**envelope, "ops": [good]}).replace("SURR", "\\ud83d")
        r = client.post("/api/v1/sync/push", content=raw.encode(), headers={**worker, "content-type": "application/json"})
        assert r.status_code == 422, r.text
        assert _named(r, field) and "not valid JSON" not in r.json()["error"]["message"], (field, r.text[:300])


def test_one_op_whose_type_is_not_text_is_rejected_alone(client, session, units):
    """API.md: one bad op is `rejected` with a reason; the others in the batch still apply. An op with
    "type": null (or 5, or no type at all) beside a good one made the whole push a 422 (`ops.0.type: Input should
    be a valid string`): the phone re-sends the batch and is refused for ever, the good report with it. A type
    that is text but unknown is already rejected alone (unknown_op_type). app/sync/schemas.py Op.type is a `str`
    checked with the envelope, against its own comment ("type and data are checked op by op")."""
    place = place_of(session, units, "grid-a-1-1", "rental")
    worker = login(client, "worker-a1")
    for bad in ({"op_id": uid(), "type": None, "data": {}}, {"op_id": uid(), "type": 5, "data": {}},
                {"op_id": uid(), "data": {}}):
        good = op("hazard.report", hazard_data(place.id, FOUND))
        r = client.post("/api/v1/sync/push", json={"ops": [bad, good]}, headers=worker)
        assert r.status_code == 200, (bad, r.text[:300])
        first, second = r.json()["results"]
        assert first["op_id"] == bad["op_id"] and first["status"] == "rejected", first
        assert first["error"]["code"] in ("unknown_op_type", "validation_error") and "type" in (first["error"].get("field") or ""), first
        assert second["status"] == "applied", second
